"""The fused Gluon backward (knob bwd_ws90) against the two-kernel Triton backward and cuDNN's, backward alone.

Asked because training sits at 0.80-0.87x cuDNN on the H100 (issue 22.1) and the fused kernel had never run on a
GPU when it was written (session 21: every device loan was refused). One call answers, in order, and stops at the
first failure:
  1. numerics: launch.backward with bwd_ws90 on ragged shapes (lengths 1, 17, 113, 1000; Nq < Nk and Nq > Nk causal,
     whose first rows have no key; GQA; d64/d128; bf16/fp16), every gradient buffer poisoned with NaN first, against
     the float64 reference at the package's gradient tolerances; each case runs in a child process with a time
     limit, so a kernel that deadlocks on its barriers is reported as such instead of hanging the probe;
  2. timing of the backward alone (do_bench, L2 flushed, median) on the training specs: the default genome's
     two-kernel backward, the same genome with bwd_ws90, and cuDNN's SDPA backward (autograd.grad on a retained
     graph), from the same forward outputs in the same process; TFLOP/s count the backward as 2.5x the forward's
     useful FLOPs, as ANCHORS.md does.
The end-to-end training A/B (forward + backward, Flex beside) is benchmarks/variants.py --training with
--variants @benchmarks/variant_sets/hopper-bwd-fused.json.
Usage (GPU): python -m benchmarks.probes.fused_bwd [--specs "4,32,32,4096,128,causal;..."] [--skip-check]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import torch

from avo_inductor.kernels import launch
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.loader import LoadedKernel, load_record
from avo_inductor.kernels.reference import make_inputs, reference_grads, tolerance
from avo_inductor.kernels.render import default_genome
from avo_inductor.spec import AttentionSpec, HardwareKey, parse_spec_text

from ..common import print_table, time_ms

TRAIN_SPECS = "4,32,32,4096,128,causal;8,16,16,2048,64,causal;4,32,8,4096,128,causal;2,32,32,8192,128,none"
# (hq, hkv, nq, nk, d, causal, dtype)
CHECK_CASES = [
    (4, 2, 1, 1, 128, True, "bfloat16"), (4, 2, 17, 17, 64, True, "bfloat16"), (2, 1, 113, 113, 128, False, "float16"),
    (4, 4, 1000, 1000, 128, True, "bfloat16"), (4, 2, 1000, 1000, 64, False, "bfloat16"),
    (2, 2, 17, 300, 128, True, "bfloat16"), (2, 2, 300, 17, 64, True, "float16"),
    (8, 1, 513, 700, 128, False, "bfloat16"),
]
CASE_SECONDS = 120  # one case compiles its kernels (tens of seconds) and runs in well under a second


def _kernel(spec: AttentionSpec, hardware: HardwareKey, fused: bool) -> LoadedKernel:
    genome = default_genome(spec, hardware).replace(bwd_ws90=fused)
    return load_record(baseline_record(spec, hardware, genome=genome))


def check_case(case: tuple[Any, ...]) -> str:
    """One numerics case (run in a child process): '' when every gradient matches, else what differs."""
    hq, hkv, nq, nk, d, causal, dtype = case
    spec = AttentionSpec(2, hq, hkv, nq, nk, d, dtype=dtype, causal=causal, needs_grad=True)
    kernel = _kernel(spec, HardwareKey.current("cuda"), fused=True)
    inp = make_inputs(spec, "cuda")
    args = dict(scale=None, causal=causal, window=0, mask_kind="none")
    out, lse = launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, inp.v, None, **args)
    do = torch.randn_like(out)
    bufs = {n: torch.full_like(t, float("nan")) for n, t in (("dq", inp.q), ("dk", inp.k), ("dv", inp.v))}
    got = launch.backward(kernel.functions, kernel.launch, do, inp.q, inp.k, inp.v, out, lse, None, **bufs, **args)
    atol, rtol = tolerance(dtype, grad=True)
    problems = []
    for name, g, r in zip(("dq", "dk", "dv"), got, reference_grads(inp.q, inp.k, inp.v, do, **args), strict=True):
        err = (g.double() - r).abs()
        bad = ~(err <= atol + rtol * r.abs())
        if bad.any():
            problems.append(f"{name}: {int(bad.sum())} of {bad.numel()} off (max err {err.max().item():.3g})")
    return "; ".join(problems)


def check_all() -> bool:
    ok = True
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    for case in CHECK_CASES:
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.probes.fused_bwd", "--one-case", json.dumps(case)],
                                  capture_output=True, text=True, env=env, timeout=CASE_SECONDS)
            verdict = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else (
                f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
        except subprocess.TimeoutExpired:
            verdict = f"no result in {CASE_SECONDS} s (a deadlock on the kernel's barriers?)"
        passed = verdict == "ok"
        ok &= passed
        print(f"check {case}: {verdict}", flush=True)
    return ok


def time_backward(spec: AttentionSpec, hardware: HardwareKey) -> dict[str, Any]:
    """Backward-only milliseconds of the two avo backwards and cuDNN's on one spec, from one forward's outputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    inp = make_inputs(spec, "cuda")
    args = dict(scale=None, causal=spec.causal, window=0, mask_kind="none")
    plain, fused = _kernel(spec, hardware, fused=False), _kernel(spec, hardware, fused=True)
    out, lse = launch.forward(plain.functions, plain.launch, inp.q, inp.k, inp.v, None, **args)
    do = torch.randn_like(out)
    row: dict[str, Any] = {"spec": spec.short()}
    for name, kernel in (("avo two-kernel", plain), ("avo fused", fused)):
        row[name] = time_ms(lambda k=kernel: launch.backward(k.functions, k.launch, do, inp.q, inp.k, inp.v, out, lse,
                                                             None, **args))
    q, k, v = (t.detach().requires_grad_() for t in (inp.q, inp.k, inp.v))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=spec.causal,
                                                                enable_gqa=spec.q_heads != spec.kv_heads)
    row["cuDNN"] = time_ms(lambda: torch.autograd.grad(ref, (q, k, v), do, retain_graph=True))
    pairs = spec.q_len * spec.kv_len / (2 if spec.causal else 1)
    flops = 4 * spec.batch * spec.q_heads * pairs * spec.head_dim * 2.5
    for name in ("avo two-kernel", "avo fused", "cuDNN"):
        row[f"{name} TF/s"] = round(flops / row[name] / 1e9, 1)
    row["fused / cuDNN"] = round(row["cuDNN"] / row["avo fused"], 3)
    row["fused / two-kernel"] = round(row["avo two-kernel"] / row["avo fused"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default=TRAIN_SPECS)
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--one-case", help=argparse.SUPPRESS)  # the child process of one numerics case
    args = parser.parse_args()
    if args.one_case:
        print(check_case(tuple(json.loads(args.one_case))) or "ok")
        return
    hardware = HardwareKey.current("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    if not args.skip_check and not check_all():
        print("numerics failed: not timed")
        sys.exit(1)
    rows = []
    for text in args.specs.split(";"):
        spec = parse_spec_text(text.strip(), needs_grad=True)
        rows.append(time_backward(spec, hardware))
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows, ["spec", "avo two-kernel", "avo fused", "cuDNN", "avo fused TF/s", "cuDNN TF/s", "fused / cuDNN",
                       "fused / two-kernel"])


if __name__ == "__main__":
    main()
