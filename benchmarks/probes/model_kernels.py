"""Which GPU kernels does one step of a real-model case run, under Inductor and under avo?

For a case of benchmarks/hf_cases.py (full profile shape), compiles the model with each backend (and the case's
SDPA twin under Inductor when it has one), warms up, profiles a few steps with torch.profiler and prints the top
kernels by GPU time. Asked first for the T5 encoder, which ran 0.60x Inductor with avo on an H100 although SDPA with
the same bias alone is 2.8x faster than Inductor's compiled form (benchmarks/probes/bias_fallback.py).
Last, the Amdahl ceiling: Inductor's GPU time per step over avo's without its attention kernels.
With --train, a training step; each backend's wall time per step is printed beside its GPU time.
Usage (GPU): python -m benchmarks.probes.model_kernels [--case t5-encoder] [--top 8] [--train]
       [--batch B] [--seq N]
"""
from __future__ import annotations

import argparse

import torch

from .. import hf_cases
from ..common import print_table
from ..launch_overhead import per_call_us
from ..models import make_step

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
        found = next(r["us/step"] for r in rows if r["backend"] == backend and str(r["kernel"]) == kernel)
        assert isinstance(found, (int, float))  # profile_step writes numbers
        return float(found)
    inductor = value("inductor", "ALL (us per step)")
    avo, avo_attention = value("avo", "ALL (us per step)"), value("avo", "attention kernels (us per step)")
    walls = f"wall time per step: inductor {value('inductor', 'wall time (us per step)'):.0f} us, avo " \
            f"{value('avo', 'wall time (us per step)'):.0f} us"
    rest = avo - avo_attention
    if rest <= 0 or avo <= 0:
        return f"no GPU kernel time recorded for avo (no CUDA device?); {walls}"
    return (f"GPU time per step: inductor {inductor:.0f} us, avo {avo:.0f} us of which attention {avo_attention:.0f} "
            f"us; avo's ceiling with free attention: {inductor / rest:.2f}x inductor (now {inductor / avo:.2f}x); "
            f"{walls}")


def profile_step(model: torch.nn.Module, x: torch.Tensor, backend: str, top: int,
                 train: bool = False) -> list[dict[str, object]]:
    """The top kernels of one step (inference, or ``train``: forward + backward as benchmarks/models.py times it),
    the GPU time of all kernels and of the attention kernels, and the wall time per step: where the wall time is
    well above the GPU time, the host bounds the step and kernel speed decides little."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    step = make_step(compiled, model, x, train)
    _, wall = per_call_us(step, calls=STEPS)  # after its warm-up; wall time to the last kernel's end
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events) / STEPS
    attention = sum(e.device_time_total for e in events if is_attention_kernel(e.key)) / STEPS
    rows: list[dict[str, object]] = [{"backend": backend, "kernel": "ALL (us per step)", "us/step": total},
                                     {"backend": backend, "kernel": "attention kernels (us per step)",
                                      "us/step": attention},
                                     {"backend": backend, "kernel": "wall time (us per step)", "us/step": wall}]
    for e in events[:top]:
        rows.append({"backend": backend, "kernel": e.key[:90], "us/step": e.device_time_total / STEPS,
                     "calls/step": e.count / STEPS})
    return rows


def main(argv: list[str] | None = None) -> None:
    import avo_inductor  # noqa: F401 - registers backend="avo"

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="t5-encoder", choices=sorted(hf_cases.CASES))
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--train", action="store_true", help="a training step (cases that train: Llama, GPT-2)")
    ap.add_argument("--batch", type=int, help="batch (default: the full profile's)")
    ap.add_argument("--seq", type=int, help="sequence length (default: the full profile's)")
    args = ap.parse_args(argv)
    case = hf_cases.CASES[args.case]
    if args.train and not case.trains:
        ap.error(f"--train: {args.case} has no training mode in the benchmark")
    model, x = hf_cases.model_and_input(args.case, "full", args.batch, args.seq, train=args.train)
    rows: list[dict[str, object]] = []
    for backend in ("inductor", "avo"):
        rows += profile_step(model, x, backend, args.top, args.train)
    if case.twin:
        device, dtype = hf_cases.device_and_dtype()
        seq = args.seq or hf_cases.SHAPES["full"][args.case][1]
        twin = hf_cases.build_model(case, "sdpa", "full", seq, device, dtype).train(args.train)
        twin.requires_grad_(args.train)
        rows += [{**r, "backend": "inductor[sdpa]"} for r in profile_step(twin, x, "inductor", args.top, args.train)]
    print_table(rows, ("backend", "kernel", "us/step", "calls/step"))
    print(attention_free_bound(rows))


if __name__ == "__main__":
    main()
