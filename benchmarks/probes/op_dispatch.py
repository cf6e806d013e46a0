"""Probe: host us per call of the ws90 forward behind different op registrations (eager and torch.compile).

Usage: python -m benchmarks.probes.op_dispatch   (an sm_90 GPU: the flash_ws90 template)
"""

import torch

from avo_inductor import kernel_for
from avo_inductor.kernels import launch
from avo_inductor.kernels.op import attention, get_kernel
from avo_inductor.kernels.reference import make_inputs
from avo_inductor.spec import parse_spec_text

from ..launch_overhead import per_call_us

spec = parse_spec_text("4,32,32,1024,128 bf16 full")
kid = kernel_for(spec, source="baseline", template="flash_ws90").kernel_id
loaded = get_kernel(kid)
inp = make_inputs(spec, "cuda")
q, k, v = inp.q, inp.k, inp.v


def run_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, kernel_id: str,
                scale: float, causal: bool, window: int, mask_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The launch every registration below wraps (what avo::attention_fwd_direct registers for CUDA)."""
    kernel = get_kernel(kernel_id)
    return launch.forward(kernel.functions, kernel.launch, q, k, v, mask, scale=scale, causal=causal, window=window,
                          mask_kind=mask_kind)


def forward_fake(q, k, v, mask, kernel_id, scale, causal, window, mask_kind):  # type: ignore[no-untyped-def]
    """Output shapes for tracing: out (B, Hq, Nq, Dv), lse (B, Hq, Nq) fp32."""
    return q.new_empty((*q.shape[:3], v.shape[3])), q.new_empty(q.shape[:3], dtype=torch.float32)


lib = torch.library.Library("avo_probe", "DEF")
lib.define("lean(Tensor q, Tensor k, Tensor v, Tensor? mask, str kernel_id, float scale, bool causal, int window, "
           "str mask_kind) -> (Tensor, Tensor)")
lib.impl("lean", run_forward, "CUDA")  # as avo::attention_fwd_direct registers it
torch.library.register_fake("avo_probe::lean", forward_fake, lib=lib)


@torch.library.custom_op("avo_probe::cop", mutates_args=())
def cop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, kernel_id: str, scale: float,
        causal: bool, window: int, mask_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    return run_forward(q, k, v, mask, kernel_id, scale, causal, window, mask_kind)


cop.register_fake(forward_fake)


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
