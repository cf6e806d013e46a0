"""Template A/B: time hand-picked genomes of the flash template against cuDNN and FlexAttention, in one process.

The built-ins are the search's own (``avo_inductor.search.bench.builtin_baseline``).

The search explores genomes automatically; this is the quick look a template author takes before a campaign
(does a new knob compile on this GPU, which tiles are in the running). Each variant's output is checked
against SDPA before it is timed; a variant that fails to compile is reported, not timed, and one that disagrees
is timed with the disagreement in a "<name> check" column beside it.
Forward variants are timed as CUDA-graph replays (no launch overhead: eager calls of small specs would time Python).
With --training every provider runs a training step (forward + autograd backward; avo through the kernel's
own Triton backward) and its gradients are checked against SDPA's; TFLOP/s then count the backward as 2.5x the
forward, as ANCHORS.md does.
Specs are the package's spec text (as attention.py's, e.g. "B,H,HKV,N,D,mask"; bf16 unless a spec says): masked and
decode specs get their mask tensors from make_inputs and are checked against SDPA given the same mask.
Usage: python -m benchmarks.variants [--specs "4,32,32,4096,128,causal;..."] [--variants '{"name": {...}}']
       [--training]   (--variants @benchmarks/variant_sets/hopper-bwd.json reads the set from a file)
Prints TFLOP/s per spec x provider and writes variants.csv (variants-training.csv; --stem names it) under --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avo_inductor import kernel_for
from avo_inductor.kernels.reference import make_inputs, tolerance
from avo_inductor.kernels.render import default_genome
from avo_inductor.search import bench
from avo_inductor.spec import AttentionSpec, HardwareKey, parse_spec_text

from .common import RESULTS, gpu_slug, print_table, time_ms, write_csv

DEFAULT_SPECS = "4,32,32,4096,128,none;4,32,32,4096,128,causal;8,16,16,2048,64,causal;4,32,8,4096,128,causal"
DEFAULT_VARIANTS = {
    "default": {},
    "128x128/w8/s2": {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2},
    "128x64/w4/s3": {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 3},
    "128x128/w8/s2+ws": {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2, "warp_specialize": True},
    "128x64/w4/s3+ws": {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 3, "warp_specialize": True},
    "128x128/w8/s3": {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 3},
}


def parse_spec(text: str) -> AttentionSpec:
    """A spec text, bf16 unless it says (",train" is --training's job here, so it is refused)."""
    spec = parse_spec_text(text, dtype="bfloat16")
    if spec.needs_grad:
        raise ValueError(f"{text!r}: drop ',train' and pass --training to time training steps")
    return spec


def variant_fn(spec: AttentionSpec, overrides: dict[str, Any], hardware: HardwareKey,
               mask: torch.Tensor | None) -> Callable[..., torch.Tensor]:
    genome = default_genome(spec, hardware, overrides.get("template")).replace(**overrides)
    handle = kernel_for(spec, source="baseline", hardware=hardware, genome=genome)
    return lambda q, k, v: handle(q, k, v, mask)


def _as_step(fn: Callable[..., torch.Tensor], do: torch.Tensor | None) -> Callable[..., tuple[torch.Tensor, ...]]:
    """fn(q, k, v) as what is timed and checked: the output alone, or (dq, dk, dv) of a training step."""
    if do is None:
        return lambda q, k, v: (fn(q, k, v),)
    return lambda q, k, v: torch.autograd.grad(fn(q, k, v), (q, k, v), do)


def _disagreement(got: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...], atol: float,
                  rtol: float) -> str | None:
    for name, g, e in zip(("out",) if len(got) == 1 else ("dq", "dk", "dv"), got, expected):
        if not torch.allclose(g.float(), e, atol=atol, rtol=rtol):
            return f"err: {name} max abs diff {(g.float() - e).abs().max().item():.3g} vs SDPA"
    return None


def measure(spec: AttentionSpec, variants: dict[str, dict[str, Any]], hardware: HardwareKey,
            training: bool = False) -> dict[str, Any]:
    """TFLOP/s per provider for ``spec`` ("err: ..." cells for variants that fail or disagree with SDPA)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = make_inputs(spec, device, seed=0)
    q, k, v = (t.requires_grad_(training) for t in (x.q, x.k, x.v))
    do = torch.randn_like(q[..., : spec.v_head_dim]) if training else None
    row: dict[str, Any] = {"spec": spec.short() + (" train" if training else "")}
    providers: dict[str, Callable[..., tuple[torch.Tensor, ...]]] = {}
    for name in ("sdpa_cudnn", "flex") if device.type == "cuda" else ("sdpa", "flex"):
        try:
            step = _as_step(bench.builtin_baseline(name, spec, x.mask, device), do)
            step(q, k, v)
            providers[name] = step
        except Exception as exc:  # a backend this build/device lacks: report, keep going
            row[name] = f"err: {type(exc).__name__}"
    expected = tuple(t.float() for t in _as_step(bench.builtin_baseline("sdpa", spec, x.mask, device), do)(q, k, v))
    atol, rtol = tolerance(spec.dtype, grad=training)
    for name, overrides in variants.items():
        try:
            step = _as_step(variant_fn(spec, overrides, hardware, x.mask), do)
            problem = _disagreement(step(q, k, v), expected, atol, rtol)
            if problem:  # still timed (a tolerance question must not cost the sweep), but flagged beside it
                row[f"{name} check"] = problem
            providers[name] = step
        except Exception as exc:
            row[name] = f"err: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    # Forward: CUDA-graph replays for every provider, so the eager launch path (~0.1-0.3 ms of Python per call,
    # more than a small spec's kernel) is not timed; a training step (autograd) is timed with do_bench.
    graph = not training and device.type == "cuda"
    for name, step in providers.items():
        ms = time_ms(lambda step=step: step(q, k, v), graph=graph)
        row[name] = round(spec.flops(backward=training) / ms / 1e9, 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=DEFAULT_SPECS)
    parser.add_argument("--variants", help="JSON object: name -> genome fields over the default genome, or "
                                           "@FILE holding one (benchmarks/variant_sets/)")
    parser.add_argument("--training", action="store_true", help="time forward + backward, check gradients")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--stem", help="CSV name without .csv (default variants, or variants-training)")
    args = parser.parse_args()
    text = args.variants or ""
    variants = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text) if text else DEFAULT_VARIANTS
    hardware = HardwareKey.current()
    rows = [measure(parse_spec(s), variants, hardware, args.training) for s in args.specs.split(";") if s.strip()]
    out = args.out or RESULTS / gpu_slug()
    stem = args.stem or ("variants-training" if args.training else "variants")
    write_csv(out / f"{stem}.csv", rows)
    print_table(rows, list(dict.fromkeys(k for row in rows for k in row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
