"""[probe] Where the time of an ALiBi forward goes, eager vs torch.compile (torch.profiler kernel table).

The bounded ALiBi kernel needs each head's largest key norm (launch.mask_operand); this shows what that costs
next to the attention kernel in each mode.
Usage: python -m benchmarks.probes.alibi_bound_profile [--spec 8,16,16,2048,64]
"""
from __future__ import annotations

import argparse

import torch

from avo_inductor import kernel_for
from avo_inductor.kernels.reference import make_inputs
from avo_inductor.spec import parse_spec_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="8,16,16,2048,64", help="spec text; ALiBi and bf16 unless it says")
    args = parser.parse_args()
    spec = parse_spec_text(args.spec if "alibi" in args.spec else f"{args.spec} alibi", dtype="bfloat16")
    handle = kernel_for(spec, source="baseline")
    x = make_inputs(spec, "cuda", seed=0)

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        return handle(q, k, v, m)

    for name, fn in (("eager", call), ("compiled", torch.compile(call, fullgraph=True))):
        for _ in range(3):
            fn(x.q, x.k, x.v, x.mask)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn(x.q, x.k, x.v, x.mask)
            torch.cuda.synchronize()
        print(f"== {name}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))


if __name__ == "__main__":
    main()
