"""Probe: host us per call of the ws90 forward behind different op registrations (eager and torch.compile)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avo_inductor.kernels import launch  # noqa: E402
from avo_inductor.kernels.baseline import baseline_record  # noqa: E402
from avo_inductor.kernels.op import (  # noqa: E402
    _attention_fwd_fake, _run_forward, attention, get_kernel, register_kernel)
from avo_inductor.kernels.reference import make_inputs  # noqa: E402
from avo_inductor.kernels.render import default_genome  # noqa: E402
from avo_inductor.spec import HardwareKey  # noqa: E402
from attention import parse_spec  # noqa: E402
from launch_overhead import per_call_us  # noqa: E402

spec = parse_spec("4,32,32,1024,128,none", "bfloat16")
hw = HardwareKey.current()
kid = register_kernel(baseline_record(spec, hw, genome=default_genome(spec, hw, "flash_ws90")))
loaded = get_kernel(kid)
inp = make_inputs(spec, "cuda")
q, k, v = inp.q, inp.k, inp.v

lib = torch.library.Library("avo_probe", "DEF")
lib.define("lean(Tensor q, Tensor k, Tensor v, Tensor? mask, str kernel_id, float scale, bool causal, int window, "
           "str mask_kind) -> (Tensor, Tensor)")
lib.impl("lean", _run_forward, "CUDA")  # the kernel avo::attention_fwd_direct registers
torch.library.register_fake("avo_probe::lean", _attention_fwd_fake, lib=lib)


@torch.library.custom_op("avo_probe::cop", mutates_args=())
def cop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, kernel_id: str, scale: float,
        causal: bool, window: int, mask_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _run_forward(q, k, v, mask, kernel_id, scale, causal, window, mask_kind)

cop.register_fake(_attention_fwd_fake)


s = q.shape[-1] ** -0.5
cases = {
    "launch.forward": lambda: launch.forward(loaded.functions, loaded.launch, q, k, v, None, scale=s, causal=False,
                                             window=0, mask_kind="none"),
    "lean Library op": lambda: torch.ops.avo_probe.lean(q, k, v, None, kid, s, False, 0, "none"),
    "lean .default": lambda: torch.ops.avo_probe.lean.default(q, k, v, None, kid, s, False, 0, "none"),
    "custom_op": lambda: torch.ops.avo_probe.cop(q, k, v, None, kid, s, False, 0, "none"),
    "triton_op (avo)": lambda: torch.ops.avo.attention_fwd(q, k, v, None, kid, s, False, 0, "none"),
    "avo::attention": lambda: attention(q, k, v, kernel_id=kid),
}
compiled = {
    "compiled lean": torch.compile(
        lambda a, b, c: torch.ops.avo_probe.lean(a, b, c, None, kid, s, False, 0, "none")[0]),
    "compiled custom_op": torch.compile(
        lambda a, b, c: torch.ops.avo_probe.cop(a, b, c, None, kid, s, False, 0, "none")[0]),
    "compiled avo::attention": torch.compile(lambda a, b, c: attention(a, b, c, kernel_id=kid)),
    "compiled q+1 (floor)": torch.compile(lambda a, b, c: a + 1),
}
for name, fn in compiled.items():
    cases[name] = (lambda f: lambda: f(q, k, v))(fn)
for grad in (True, False):
    with torch.set_grad_enabled(grad):
        for name, fn in cases.items():
            host, total = per_call_us(fn)
            print(f"grad={grad!s:5} {name:28} host {host:7.1f} us  total {total:7.1f} us", flush=True)
