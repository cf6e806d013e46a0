"""Where does a decode call's time go above the HBM floor?

For each decode spec: the default genome's call (and genome variants given with --variants) timed as CUDA-graph
replays exactly as attention.py times it, the per-kernel GPU time inside those replays (torch.profiler: the
split-K forward and its reduce; "other" is any further kernel, such as split_combine's zero-fill of its tickets),
the rest (launch gaps and tails between kernels), cuDNN's SDPA on the same
inputs, and the HBM floor (bytes of Q, K, V and O over this run's copy bandwidth).
Asked because decode sits at 1.05-1.13x the floor on the H100 (issue 22.3): is the gap the forward's streaming,
the reduce kernel, or the boundary between the two launches? Variants are timed, not checked: run them through
benchmarks/variants.py (which checks each against SDPA) before quoting one as a kernel.
Usage (GPU): python -m benchmarks.probes.decode_breakdown [--specs "8,32,8,1,8192,128,none;..."]
       [--variants '{"splits 8": {"kv_splits": 8}}']  (or @benchmarks/variant_sets/FILE.json)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from avo_inductor.kernels.reference import make_inputs
from avo_inductor.search import bench
from avo_inductor.search.bench import GRAPH_CALLS, CapturedCalls
from avo_inductor.spec import AttentionSpec, HardwareKey, parse_spec_text

from ..attention import Timing, copy_bandwidth, hbm_bytes
from ..common import print_table
from ..variants import variant_fn

DECODE_SPECS = "8,32,8,1,8192,128,none;1,32,8,1,32768,128,none;32,32,8,1,4096,128,none"
REPLAYS = 5


def kernel_us(graph: CapturedCalls) -> dict[str, float]:
    """GPU microseconds per call of each kernel name in ``graph``'s replays (torch.profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(REPLAYS):
            graph.replay()
        torch.cuda.synchronize()
    calls = REPLAYS * graph.calls
    return {e.key: e.device_time_total / calls for e in prof.key_averages() if e.device_time_total > 0}


def breakdown(spec: AttentionSpec, name: str, overrides: dict[str, Any], hardware: HardwareKey,
              floor_us: float, device: torch.device) -> dict[str, Any]:
    """One row: per-call replay time, the kernels' shares, the gap between them, and time over the floor."""
    x = make_inputs(spec, device, seed=0)
    fn = variant_fn(spec, overrides, hardware, x.mask)
    graph = CapturedCalls(lambda: fn(x.q, x.k, x.v), GRAPH_CALLS, device)
    per_call = graph.median_ms_per_call(device, reps=20) * 1e3
    kernels = kernel_us(graph)
    fwd = sum(us for k, us in kernels.items() if "attn_fwd" in k and "reduce" not in k)
    red = sum(us for k, us in kernels.items() if "reduce" in k)
    other = sum(kernels.values()) - fwd - red  # e.g. split_combine's zero-fill of its tickets
    return {"spec": spec.short(), "variant": name, "call us": per_call, "fwd kernel us": fwd, "reduce us": red,
            "other us": other, "gaps us": per_call - fwd - red - other, "floor us": floor_us,
            "x floor": per_call / floor_us, "kernels": len(kernels)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default=DECODE_SPECS)
    ap.add_argument("--variants", default="", help="JSON name -> genome overrides, or @FILE")
    args = ap.parse_args(argv)
    text = args.variants
    variants = {"default": {}, **(json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
                                 if text else {})}
    device = torch.device("cuda")
    hardware = HardwareKey.current()
    bandwidth = copy_bandwidth(device, 1024 * 2**20, Timing())
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows: list[dict[str, Any]] = []
    for text_spec in filter(None, (s.strip() for s in args.specs.split(";"))):
        spec = parse_spec_text(text_spec, dtype="bfloat16")
        floor_us = hbm_bytes(spec) / bandwidth * 1e6
        for name, overrides in variants.items():
            try:
                rows.append(breakdown(spec, name, overrides, hardware, floor_us, device))
            except Exception as exc:  # a variant this spec cannot take: say so, keep going
                rows.append({"spec": spec.short(), "variant": name, "call us": f"err: {str(exc)[:60]}"})
        x = make_inputs(spec, device, seed=0)
        sdpa = bench.builtin_baseline("sdpa_cudnn", spec, x.mask, device)
        graph = CapturedCalls(lambda: sdpa(x.q, x.k, x.v), GRAPH_CALLS, device)
        cudnn_us = graph.median_ms_per_call(device, reps=20) * 1e3
        rows.append({"spec": spec.short(), "variant": "cuDNN SDPA", "call us": cudnn_us,
                     "fwd kernel us": sum(kernel_us(graph).values()), "floor us": floor_us,
                     "x floor": cudnn_us / floor_us})
    print_table(rows, ("spec", "variant", "call us", "fwd kernel us", "reduce us", "other us", "gaps us", "floor us",
                       "x floor", "kernels"))


if __name__ == "__main__":
    main()
