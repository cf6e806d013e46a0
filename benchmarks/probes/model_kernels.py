"""Which GPU kernels does one inference step of a real-model case run, under Inductor and under avo?

For a case of benchmarks/hf_cases.py (full profile shape), compiles the model with each backend (and the case's
SDPA twin under Inductor when it has one), warms up, profiles a few steps with torch.profiler and prints the top
kernels by GPU time. Asked first for the T5 encoder, which ran 0.60x Inductor with avo on an H100 although SDPA with
the same bias alone is 2.8x faster than Inductor's compiled form (benchmarks/probes/bias_fallback.py).
Last, the Amdahl ceiling: Inductor's GPU time per step over avo's without its attention kernels.
Usage (GPU): python -m benchmarks.probes.model_kernels [--case t5-encoder] [--top 8]
"""
from __future__ import annotations

import argparse

import torch

from .. import hf_cases
from ..common import print_table

STEPS = 5


ATTENTION_NAMES = ("attn_fwd", "attn_bwd", "fmha", "flash", "cudnn", "attention", "sdpa")


def is_attention_kernel(name: str) -> bool:
    """A fused attention kernel: avo's (attn_fwd*, attn_bwd*), cuDNN's, FlashAttention's, the efficient kernel.
    Inductor's unfused form (GEMMs and a softmax fusion) is not counted: only avo's and SDPA's share is asked for."""
    lowered = name.lower()
    return any(tag in lowered for tag in ATTENTION_NAMES)


def attention_free_bound(rows: list[dict[str, object]]) -> str:
    """Amdahl: Inductor's step over avo's step without its attention kernels: no attention kernel, however fast,
    makes the model more than this much faster than Inductor."""
    def value(backend: str, kernel: str) -> float:
        return float(next(r["us/step"] for r in rows if r["backend"] == backend and str(r["kernel"]) == kernel))
    inductor = value("inductor", "ALL (us per step)")
    avo, avo_attention = value("avo", "ALL (us per step)"), value("avo", "attention kernels (us per step)")
    rest = avo - avo_attention
    return (f"GPU time per step: inductor {inductor:.0f} us, avo {avo:.0f} us of which attention {avo_attention:.0f} "
            f"us; avo's ceiling with free attention: {inductor / rest:.2f}x inductor (now {inductor / avo:.2f}x)")


def profile_step(model: torch.nn.Module, x: torch.Tensor, backend: str, top: int) -> list[dict[str, object]]:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        for _ in range(3):
            compiled(x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                compiled(x)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events) / STEPS
    attention = sum(e.device_time_total for e in events if is_attention_kernel(e.key)) / STEPS
    rows: list[dict[str, object]] = [{"backend": backend, "kernel": "ALL (us per step)", "us/step": total},
                                     {"backend": backend, "kernel": "attention kernels (us per step)",
                                      "us/step": attention}]
    for e in events[:top]:
        rows.append({"backend": backend, "kernel": e.key[:90], "us/step": e.device_time_total / STEPS,
                     "calls/step": e.count / STEPS})
    return rows


def main(argv: list[str] | None = None) -> None:
    import avo_inductor  # noqa: F401 - registers backend="avo"

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="t5-encoder", choices=sorted(hf_cases.CASES))
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    case = hf_cases.CASES[args.case]
    model, x = hf_cases.model_and_input(args.case, "full")
    rows: list[dict[str, object]] = []
    for backend in ("inductor", "avo"):
        rows += profile_step(model, x, backend, args.top)
    if case.twin:
        device, dtype = hf_cases.device_and_dtype()
        seq = hf_cases.SHAPES["full"][args.case][1]
        twin = hf_cases.build_model(case, "sdpa", "full", seq, device, dtype).eval().requires_grad_(False)
        rows += [{**r, "backend": "inductor[sdpa]"} for r in profile_step(twin, x, "inductor", args.top)]
    print_table(rows, ("backend", "kernel", "us/step", "calls/step"))
    print(attention_free_bound(rows))


if __name__ == "__main__":
    main()
