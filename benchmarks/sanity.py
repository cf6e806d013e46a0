"""Before a campaign on a new GPU / Triton: do the template's genomes pass the whole cascade here?

Runs the sandboxed evaluator (the same one the search uses) on a few genomes x specs and prints one line per
pair: stage reached, error, speedup over the best built-in. A default genome that fails here would waste a
whole campaign, so gpu_session.sh runs this first. Usage: python -m benchmarks.sanity [--gpus 1]
"""
from __future__ import annotations

import argparse
import sys

from avo_inductor.kernels.render import default_genome
from avo_inductor.search.evaluate import SandboxedEvaluator
from avo_inductor.search.operators import candidate_id, genome_hash
from avo_inductor.check.sandbox import default_devices
from avo_inductor.search.types import Candidate
from avo_inductor.spec import AttentionSpec, HardwareKey

SPECS = (
    AttentionSpec(2, 16, 16, 1024, 1024, 128, dtype="bfloat16", causal=True),
    AttentionSpec(2, 16, 4, 1000, 1000, 64, dtype="bfloat16"),
    AttentionSpec(2, 8, 8, 512, 512, 64, dtype="bfloat16", causal=True, needs_grad=True),
)
# --large: the biggest h100-core targets through the whole cascade (the float64 reference in slices, inputs of
# several GB snapshotted on the GPU), default genome only.
LARGE_SPECS = (
    AttentionSpec(2, 32, 32, 8192, 8192, 128, dtype="bfloat16", causal=True),
    AttentionSpec(4, 32, 32, 4096, 4096, 128, dtype="bfloat16", mask="bias"),
)
VARIANTS = {"default": {}, "128x128/w8": {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2},
            "warp-specialized": {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2,
                                 "warp_specialize": True}}


def candidates(hardware: HardwareKey, large: bool = False) -> list[tuple[str, Candidate]]:
    out = []
    for spec in LARGE_SPECS if large else SPECS:
        for name, overrides in ({"default": {}} if large else VARIANTS).items():
            genome = default_genome(spec, hardware, overrides.get("template")).replace(**overrides)
            out.append((name, Candidate(candidate_id(spec, genome_hash(genome)), spec, genome=genome)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--large", action="store_true", help="the largest campaign targets instead, default genome")
    args = parser.parse_args()
    hardware = HardwareKey.current()
    pairs = candidates(hardware, args.large)
    with SandboxedEvaluator(default_devices()[: args.gpus], timeout_s=400 if args.large else 240) as evaluator:
        results = evaluator.evaluate([c for _, c in pairs])
    print(f"{'spec':<44} {'variant':<18} {'stage':<15} {'speedup':>8}  message")
    for (name, cand), res in zip(pairs, results):
        speedup = f"{res.speedup:.3f}" if res.speedup is not None else "-"
        print(f"{cand.spec.short():<44} {name:<18} {res.stage.value:<15} {speedup:>8}  {res.duration_s:6.1f}s  "
              f"{res.message[:100]!r}")
    defaults_ok = all(r.ok for (name, _), r in zip(pairs, results) if name == "default")
    return 0 if defaults_ok else 1


if __name__ == "__main__":
    sys.exit(main())
