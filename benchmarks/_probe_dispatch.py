"""Temporary probe (not committed): where the opaque op's host time goes on the GPU host."""
import sys, time, cProfile, pstats, io
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_overhead import per_call_us
from attention import parse_spec
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.op import attention, register_kernel, get_kernel
from avo_inductor.kernels import op as opmod, launch
from avo_inductor.kernels.reference import make_inputs
from avo_inductor.kernels.render import default_genome
from avo_inductor.spec import HardwareKey

hw = HardwareKey.current()
rows = []
for text in sys.argv[1].split(";"):
    spec = parse_spec(text, "bfloat16")
    inp = make_inputs(spec, "cuda")
    for template in ("flash_v1", "flash_ws90"):
        kid = register_kernel(baseline_record(spec, hw, genome=default_genome(spec, hw, template)))
        ld = get_kernel(kid)
        def op(q, k, v, kid=kid):
            return attention(q, k, v, kernel_id=kid, causal=spec.causal)
        def raw(q, k, v):
            return launch.forward(ld.functions, ld.launch, q, k, v, None, scale=spec.effective_scale, causal=spec.causal, window=0, mask_kind="none")[0]
        def fwd_op(q, k, v, kid=kid):
            return torch.ops.avo.attention_fwd(q, k, v, None, kid, spec.effective_scale, spec.causal, 0, "none")[0]
        torch._dynamo.reset()
        comp = torch.compile(op, backend="inductor")
        for name, fn in (("raw launch.forward", raw), ("attention_fwd op", fwd_op), ("attention op", op), ("compiled", comp)):
            h, t = per_call_us(lambda fn=fn: fn(inp.q, inp.k, inp.v))
            with torch.inference_mode():
                hi, ti = per_call_us(lambda fn=fn: fn(inp.q, inp.k, inp.v)) if name != "compiled" else (float("nan"),)*2
            rows.append((spec.short(), template, name, h, t, hi, ti))
            print(rows[-1], flush=True)
# direct CUDA registration bypassing custom_op's backend_impl
def _fwd_cuda(q, k, v, mask, kernel_id, scale, causal, window, mask_kind):
    loaded = opmod.get_kernel(kernel_id)
    return launch.forward(loaded.functions, loaded.launch, q, k, v, mask, scale=scale, causal=causal, window=window, mask_kind=mask_kind)
lib = torch.library.Library("avo", "IMPL")
lib.impl("attention_fwd", _fwd_cuda, "CUDA")
for text in sys.argv[1].split(";"):
    spec = parse_spec(text, "bfloat16")
    inp = make_inputs(spec, "cuda")
    for template in ("flash_v1", "flash_ws90"):
        kid = register_kernel(baseline_record(spec, hw, genome=default_genome(spec, hw, template)))
        def op(q, k, v, kid=kid):
            return attention(q, k, v, kernel_id=kid, causal=spec.causal)
        torch._dynamo.reset()
        comp = torch.compile(op, backend="inductor")
        for name, fn in (("attention op [CUDA impl]", op), ("compiled [CUDA impl]", comp)):
            h, t = per_call_us(lambda fn=fn: fn(inp.q, inp.k, inp.v))
            rows.append((spec.short(), template, name, h, t, float("nan"), float("nan")))
            print(rows[-1], flush=True)
        if template == "flash_ws90":
            pr = cProfile.Profile(); pr.enable()
            for _ in range(200): comp(inp.q, inp.k, inp.v)
            pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14); print(s.getvalue())
print(f"{'spec':38} {'template':11} {'path':26} {'host':>7} {'total':>7} {'inf host':>8} {'inf tot':>8}")
for r in rows:
    print(f"{r[0]:38} {r[1]:11} {r[2]:26} {r[3]:7.1f} {r[4]:7.1f} {r[5]:8.1f} {r[6]:8.1f}")
