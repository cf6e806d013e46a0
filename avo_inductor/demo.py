"""`make demo`: compile a small built-in transformer with backend="avo" and show what was found, tuned and used.

1. explain(): the attention sites in the model (hand-written causal GQA attention) and what the store has.
2. compile: a miss — the site falls back to fused SDPA and its shape is queued for tuning.
3. tune: `python -m avo_inductor.search run --pending --quick` evolves a kernel for the queued shape.
4. compile again: a hit — the model runs the evolved Triton kernel; outputs and gradients match eager.
On CPU kernels run in Triton's interpreter (TRITON_INTERPRET=1), so the model and the search are tiny.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rich.console import Console


def _banner(console: Console, text: str) -> None:
    console.rule(f"[bold]{text}")


def main() -> int:
    from rich.console import Console

    import avo_inductor
    from avo_inductor.cache.store import KernelStore
    from avo_inductor.example_models import tiny_llama

    console = Console()
    on_gpu = torch.cuda.is_available()
    if not on_gpu and os.environ.get("TRITON_INTERPRET") != "1":
        console.print("[red]No GPU: run with TRITON_INTERPRET=1 (make demo sets it).")
        return 2
    device = "cuda" if on_gpu else "cpu"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    settings = avo_inductor.get_settings()
    console.print(f"avo_inductor {avo_inductor.__version__} · device {avo_inductor.HardwareKey.current().name} · "
                  f"store {settings.cache_dir}")

    torch.manual_seed(0)
    model = tiny_llama().to(device=device, dtype=dtype).eval()
    x = torch.randn(2, 48, 64, device=device, dtype=dtype)

    _banner(console, "1. explain(): attention sites in the model")
    with torch.no_grad():
        avo_inductor.explain(model, x)

    _banner(console, "2. torch.compile(model, backend='avo') — before tuning")
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(x)
        out = torch.compile(model, backend="avo")(x)
    console.print(f"max |compiled - eager| = {float((out - eager).abs().max()):.2e}")
    pending = KernelStore.from_settings(settings).pending()
    console.print(f"pending queue: {len(pending)} shape(s): " + ", ".join(p.spec.short() for p in pending))

    _banner(console, "3. python -m avo_inductor.search run --pending --quick")
    start = time.time()
    cmd = [sys.executable, "-m", "avo_inductor.search", "run", "--pending", "--quick"]
    result = subprocess.run(cmd, env=os.environ.copy())
    if result.returncode != 0:
        console.print(f"[red]search failed with exit code {result.returncode}")
        return result.returncode
    console.print(f"search finished in {time.time() - start:.0f}s")

    _banner(console, "4. compile again: the tuned kernel is used")
    torch._dynamo.reset()
    with torch.no_grad():
        report = avo_inductor.explain(model, x)
    if not on_gpu:
        console.print("(speedups are timed against SDPA on this device: the CPU interpreter is ~1000x slower than "
                      "native kernels, so they mean something only on a GPU)")
    compiled = torch.compile(model, backend="avo")
    with torch.no_grad():
        out = compiled(x)
    err = float((out - eager).abs().max())
    hits = sum(1 for s in report if s.action == "avo")
    console.print(f"{hits}/{len(report)} site(s) run avo kernels · max |compiled - eager| = {err:.2e}")
    model.train()
    xg = x.clone().requires_grad_(True)
    w = torch.randn_like(x)  # random projection: the output is RMS-normalised, so mean(out**2) has ~no gradient
    ref_grad = torch.autograd.grad((model(xg) * w).sum(), xg)[0]
    torch._dynamo.reset()
    grad = torch.autograd.grad((torch.compile(model, backend="avo")(xg) * w).sum(), xg)[0]
    grad_err = float((grad - ref_grad).norm() / ref_grad.norm())
    console.print(f"training step: |grad compiled - grad eager| / |grad eager| = {grad_err:.2e}")
    ok = hits == len(report) and err < (2e-2 if on_gpu else 1e-4) and grad_err < (3e-2 if on_gpu else 1e-4)
    console.print("[green]demo OK" if ok else "[red]demo: kernel not used or outputs differ")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
