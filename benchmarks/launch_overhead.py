"""Host cost of one avo attention call, per template: eager and under torch.compile (CUDA only).

    python -m benchmarks.launch_overhead [--specs "4,32,32,1024,128,none;..."] [--out DIR] [--profile] [--layers]

For each spec and template (flash_v1; flash_ws90 on sm_90) it times N back-to-back calls of the op (eager, under
torch.compile, and under torch.compile's CUDA graphs, mode="reduce-overhead") and reports the host time per call
(the loop without a final synchronize) beside the total per call (with it). When host >= total
the call is host-bound: the GPU waits for Python. flash_v1 is inlined by Inductor (its kernels are launched from
Inductor's own code); flash_ws90's Gluon forward is an opaque op (avo::attention_fwd_direct) Inductor calls through
the dispatcher, which is why render.WS90_MIN_FLOPS keeps small specs on flash_v1. Writes launch-overhead.csv;
``--profile`` also writes launch-profile.txt, cProfile's top functions (by own time) of 200 calls per template and
mode: where the host time goes. ``--layers`` writes launch-layers.csv: the host time per call of each layer of
one eager flash_ws90 call, from the plan's held compiled kernel alone (PlannedLaunch.launch) up to the public op and
the compiled graph, so the cost of each layer is the difference between neighbouring rows.
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avo_inductor import kernel_for
from avo_inductor.kernels.op import attention
from avo_inductor.kernels.reference import make_inputs
from avo_inductor.kernels.render import default_genome, render
from avo_inductor.spec import AttentionSpec, HardwareKey, parse_spec_text

from .common import RESULTS, gpu_slug, print_table, write_csv

DEFAULT_SPECS = "4,32,32,1024,128,none;4,32,32,4096,128,none;4,32,32,4096,128,causal"


def per_call_us(fn: Callable[[], Any], calls: int = 200) -> tuple[float, float]:
    """(host, total) microseconds per call over ``calls`` back-to-back calls after a warm-up."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host, (time.perf_counter() - start) / calls * 1e6


def templates_for(spec: AttentionSpec, hardware: HardwareKey) -> list[str]:
    names = ["flash_v1"]
    try:
        render(default_genome(spec, hardware, "flash_ws90"), spec)
    except ValueError:
        return names
    return names + ["flash_ws90"] if tuple(hardware.capability) == (9, 0) else names


def profile_text(title: str, fn: Callable[[], Any], calls: int = 200, top: int = 18) -> str:
    """cProfile's ``top`` functions by own time over ``calls`` calls of ``fn`` (already warm), as text."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return f"==== {title}: {calls} calls\n{text.getvalue()}"


def measure(spec: AttentionSpec, hardware: HardwareKey, profiles: list[str] | None = None) -> list[dict[str, Any]]:
    inputs = make_inputs(spec, "cuda")
    rows = []
    for template in templates_for(spec, hardware):
        kid = kernel_for(spec, source="baseline", hardware=hardware, template=template).kernel_id

        def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kid: str = kid) -> torch.Tensor:
            return attention(q, k, v, kernel_id=kid, causal=spec.causal)

        compiled = torch.compile(op, backend="inductor")
        graphed = torch.compile(op, backend="inductor", mode="reduce-overhead")
        row: dict[str, Any] = {"spec": spec.short(), "template": template}
        for mode, fn in (("eager", op), ("compiled", compiled), ("cudagraphs", graphed)):
            call = functools.partial(fn, inputs.q, inputs.k, inputs.v)
            host, total = per_call_us(call)
            row[f"{mode} host us"], row[f"{mode} total us"] = round(host, 1), round(total, 1)
            if profiles is not None:
                profiles.append(profile_text(f"{spec.short()} {template} {mode}", call))
        rows.append(row)
    return rows


def layer_rows(spec: AttentionSpec, hardware: HardwareKey, template: str) -> list[dict[str, Any]]:
    """Host us per call of each layer of one ``template`` forward, innermost first (see the module docstring)."""
    from avo_inductor.kernels import launch
    from avo_inductor.kernels.launch_plan import PLANS, plan_key
    from avo_inductor.kernels.op import get_kernel

    inputs = make_inputs(spec, "cuda")
    q, k, v = inputs.q, inputs.k, inputs.v
    kid = kernel_for(spec, source="baseline", hardware=hardware, template=template).kernel_id
    loaded = get_kernel(kid)
    call_args = dict(scale=None, causal=spec.causal, window=0, mask_kind="none")
    launch.forward(loaded.functions, loaded.launch, q, k, v, None, **call_args)  # compiles and plans
    m, _, _ = launch.mask_operand(q, None, "none", k.shape[2])
    # the plan launch.forward just made, under the key it files eager plans by (kernel ids, then the scalars
    # in launch.forward's order: mask kind, scale, causal, window)
    key = plan_key((id(loaded.functions), id(loaded.launch)), q, k, v, None, ("none", None, spec.causal, 0))
    plan = PLANS.get(key)
    if plan is None:
        raise RuntimeError(f"launch.forward filed no eager plan for {spec.to_text()} ({template})")
    tensors = {"q": q, "k": k, "v": v, "mask": m}
    planned = plan.launches[0]
    table = dict(tensors)
    plan.run(table, None, None, True)  # fills out, lse and the descriptors
    compiled = torch.compile(lambda a, b, c: attention(a, b, c, kernel_id=kid, causal=spec.causal),
                             backend="inductor")
    layers: list[tuple[str, Callable[[], Any]]] = [
        ("compiled kernel launcher", lambda: planned.launch(table, plan.via, True)),
        ("plan.run", lambda: plan.run(dict(tensors), None, None, True)),
        ("launch.forward", lambda: launch.forward(loaded.functions, loaded.launch, q, k, v, None, **call_args)),
        ("avo::attention_fwd", lambda: torch.ops.avo.attention_fwd(q, k, v, None, kid, q.shape[-1] ** -0.5,
                                                                   spec.causal, 0, "none")),
        ("avo::attention (eager op)", lambda: attention(q, k, v, kernel_id=kid, causal=spec.causal)),
        ("torch.compile(inductor)", lambda: compiled(q, k, v)),
    ]
    rows = []
    for name, fn in layers:
        with torch.no_grad():
            host, total = per_call_us(fn)
        rows.append({"spec": spec.short(), "template": template, "layer": name, "host us": round(host, 1),
                     "total us": round(total, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default=DEFAULT_SPECS)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="also write launch-profile.txt (cProfile per call)")
    parser.add_argument("--layers", action="store_true", help="also write launch-layers.csv (host us per layer)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.launch_overhead times CUDA launches: no CUDA device here", file=sys.stderr)
        return 2
    hardware = HardwareKey.current()
    profiles: list[str] | None = [] if args.profile else None
    rows = [row for text in args.specs.split(";")
            for row in measure(parse_spec_text(text, dtype="bfloat16"), hardware, profiles)]
    out = args.out or RESULTS / gpu_slug()
    write_csv(out / "launch-overhead.csv", rows)
    if profiles is not None:
        (out / "launch-profile.txt").write_text("\n".join(profiles))
    if args.layers:
        template = "flash_ws90" if tuple(hardware.capability) == (9, 0) else "flash_v1"
        layers = [row for text in args.specs.split(";")
                  for row in layer_rows(parse_spec_text(text, dtype="bfloat16"), hardware, template)]
        write_csv(out / "launch-layers.csv", layers)
        print_table(layers, list(layers[0]))
    print_table(rows, list(rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
