"""Probe: which GPU kernels one compiled avo call runs, and their times (torch.profiler), for the default template of
a spec; prints Inductor's generated wrapper too (TORCH_LOGS=output_code is noisier)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avo_inductor.kernels.baseline import baseline_record  # noqa: E402
from avo_inductor.kernels.op import attention, register_kernel  # noqa: E402
from avo_inductor.kernels.reference import make_inputs  # noqa: E402
from avo_inductor.kernels.render import default_genome  # noqa: E402
from avo_inductor.spec import HardwareKey  # noqa: E402
from attention import parse_spec  # noqa: E402

text = sys.argv[1] if len(sys.argv) > 1 else "16,12,12,1024,64,causal"
spec = parse_spec(text, "bfloat16")
hw = HardwareKey.current()
kid = register_kernel(baseline_record(spec, hw, genome=default_genome(spec, hw)))
inp = make_inputs(spec, "cuda")
fn = torch.compile(lambda q, k, v: attention(q, k, v, kernel_id=kid, causal=spec.causal), backend="inductor")
from torch._inductor.utils import run_and_get_code  # noqa: E402

_, codes = run_and_get_code(fn, inp.q, inp.k, inp.v)
for code in codes:
    call = code[code.find("def call("):]
    print(call[:3000])
for _ in range(20):
    fn(inp.q, inp.k, inp.v)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(20):
        fn(inp.q, inp.k, inp.v)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
