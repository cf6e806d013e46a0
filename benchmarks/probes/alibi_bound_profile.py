"""[probe] Where the time of an ALiBi forward goes, eager vs torch.compile (torch.profiler kernel table).

The bounded ALiBi kernel needs each head's largest key norm (launch.mask_operand); this shows what that costs
next to the attention kernel in each mode.
Usage: python benchmarks/probes/alibi_bound_profile.py [--spec 8,16,16,2048,64]
"""
from __future__ import annotations

import argparse

import torch

from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.op import register_kernel
from avo_inductor.kernels.reference import make_inputs
from avo_inductor.kernels.render import default_genome
from avo_inductor.spec import AttentionSpec, HardwareKey


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="8,16,16,2048,64")
    args = parser.parse_args()
    b, h, hkv, n, d = (int(x) for x in args.spec.split(","))
    spec = AttentionSpec(b, h, hkv, n, n, d, dtype="bfloat16", mask="alibi")
    hw = HardwareKey.current()
    kid = register_kernel(baseline_record(spec, hw, genome=default_genome(spec, hw)))
    x = make_inputs(spec, "cuda", seed=0)

    def call(q, k, v, m):
        return torch.ops.avo.attention(q, k, v, m, kid, spec.effective_scale, False, 0, "alibi")

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
