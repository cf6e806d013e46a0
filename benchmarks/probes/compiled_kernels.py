"""Probe: which GPU kernels one compiled avo call runs, and their times (torch.profiler), for the default template of
a spec; prints Inductor's generated wrapper too (TORCH_LOGS=output_code is noisier). ``SPEC train``: a training
step (forward + backward) instead, beside the same step through SDPA (cuDNN).
Usage: python -m benchmarks.probes.compiled_kernels [SPEC [train]]   (SPEC: spec text, bf16 unless it says)"""
import sys

import torch

from avo_inductor import kernel_for
from avo_inductor.kernels.op import attention
from avo_inductor.kernels.reference import make_inputs
from avo_inductor.spec import parse_spec_text

text = sys.argv[1] if len(sys.argv) > 1 else "16,12,12,1024,64,causal"
train = len(sys.argv) > 2 and sys.argv[2] == "train"
spec = parse_spec_text(text, dtype="bfloat16", needs_grad=train)
kid = kernel_for(spec, source="baseline").kernel_id
inp = make_inputs(spec, "cuda")
q, k, v = (t.requires_grad_(train) for t in (inp.q, inp.k, inp.v))
fn = torch.compile(lambda q, k, v: attention(q, k, v, kernel_id=kid, causal=spec.causal), backend="inductor")
sdpa = torch.compile(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
    q, k, v, is_causal=spec.causal, enable_gqa=spec.q_heads != spec.kv_heads), backend="inductor")
do = torch.randn_like(q)


def step(f):
    out = f(q, k, v)
    if train:
        out.backward(do)
    return out


if not train:
    from torch._inductor.utils import run_and_get_code

    _, codes = run_and_get_code(fn, q, k, v)
    for code in codes:
        print(code[code.find("def call("):][:3000])
for name, f in (("avo", fn), ("sdpa", sdpa)):
    for _ in range(10):
        step(f)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step(f)
        torch.cuda.synchronize()
    print(f"==== {name}: 10 {'training steps' if train else 'calls'}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))
