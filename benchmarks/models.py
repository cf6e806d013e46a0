"""End-to-end: built-in Llama-style and GPT-2-style decoders, backend="avo" vs "inductor" vs eager.

Inference forward and a training step (forward + backward), bf16, plus compile time of each backend.
Usage: python benchmarks/models.py [--cases llama:4:2048,llama:1:8192] [--quick]
Writes benchmarks/results/<gpu>/models.csv and models.png; prints a table last.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, bar_plot, gpu_slug, print_table, time_ms, write_csv  # noqa: E402

from avo_inductor.example_models import ModelConfig, gpt2_style, llama_style  # noqa: E402

DEFAULT_CASES = "llama:4:2048,llama:1:8192,llama:4:1024,llama:2:4096,gpt2:8:1024,gpt2:4:4096"


def build(kind: str, attn: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    if kind == "llama":
        model = llama_style(ModelConfig(attn=attn))
    elif kind == "gpt2":
        model = gpt2_style(ModelConfig(dim=768, n_heads=12, n_kv_heads=12, n_layers=4, max_seq_len=8192, attn=attn))
    else:
        raise ValueError(f"unknown model kind {kind!r}; use llama or gpt2")
    torch.manual_seed(0)
    return model.to(device=device, dtype=dtype)


def measure(model: torch.nn.Module, backend: str | None, x: torch.Tensor, train: bool) -> dict[str, float]:
    torch._dynamo.reset()
    model.train(train)
    fn = model if backend is None else torch.compile(model, backend=backend)

    def step() -> None:
        if train:
            out = fn(x)
            out.float().square().mean().backward()
        else:
            with torch.no_grad():
                fn(x)

    start = time.perf_counter()
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    return {"ms": time_ms(step, warmup_ms=50, rep_ms=300), "first_call_s": compile_s}


DEFAULT_VARIANTS = "eager:handwritten,inductor:handwritten,avo:handwritten,inductor:sdpa,avo:sdpa"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma list of kind:batch:seq")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list of backend:attn")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    variants = [v.split(":") for v in args.variants.split(",")]
    rows = []
    for case in args.cases.split(","):
        kind, batch, seq = case.split(":")
        for mode in args.modes.split(","):
            row: dict[str, object] = {"model": kind, "B": int(batch), "N": int(seq), "mode": mode}
            dim = 2048 if kind == "llama" else 768
            x = torch.randn(int(batch), int(seq), dim, device=device, dtype=dtype)
            models: dict[str, torch.nn.Module] = {}
            for backend, attn in variants:
                model = models.setdefault(attn, build(kind, attn, device, dtype))
                name = f"{backend}[{attn}]"
                try:
                    res = measure(model, None if backend == "eager" else backend, x, mode == "train")
                    row[f"{name} ms"], row[f"{name} first s"] = res["ms"], res["first_call_s"]
                except torch.cuda.OutOfMemoryError:
                    row[f"{name} ms"] = None
                if device == "cuda":
                    torch.cuda.empty_cache()
            for attn in ("handwritten", "sdpa"):
                ind, avo = row.get(f"inductor[{attn}] ms"), row.get(f"avo[{attn}] ms")
                if ind and avo:
                    row[f"speedup avo/inductor [{attn}]"] = ind / avo
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = args.out or RESULTS / gpu_slug()
    write_csv(out / "models.csv", rows)
    groups = [f"{r['model']} B{r['B']} N{r['N']} {r['mode']}" for r in rows]
    series = {k: [r.get(k) for r in rows] for k in ("speedup avo/inductor [handwritten]", "speedup avo/inductor [sdpa]")}
    bar_plot(out / "models.png", groups, series, "speedup over backend=inductor", f"avo end to end ({gpu_slug()})")
    cols = ["model", "B", "N", "mode", "eager[handwritten] ms", "inductor[handwritten] ms", "avo[handwritten] ms",
            "speedup avo/inductor [handwritten]", "inductor[sdpa] ms", "avo[sdpa] ms", "speedup avo/inductor [sdpa]",
            "inductor[handwritten] first s", "avo[handwritten] first s"]
    print()
    print_table(rows, [c for c in cols if any(c in r for r in rows)])


if __name__ == "__main__":
    os.environ.setdefault("AVO_ON_MISS", "fallback")
    main()
