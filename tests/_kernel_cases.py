"""Shared helpers of the kernel tests: render + load a genome for a spec and run it with NaN-poisoned outputs."""
from __future__ import annotations

import torch

from avo_inductor.kernels import launch
from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.kernels.loader import LoadedKernel, load_source
from avo_inductor.kernels.reference import AttentionInputs, make_inputs
from avo_inductor.kernels.render import default_genome, render
from avo_inductor.spec import AttentionSpec, HardwareKey

CPU = HardwareKey("cpu", "triton-interpreter", (0, 0), 0)


def load(spec: AttentionSpec, **knobs: object) -> LoadedKernel:
    genome: KernelGenome = default_genome(spec, CPU).replace(**knobs)
    rk = render(genome, spec)
    return load_source(rk.source, rk.entry_point, rk.bwd_entry_point, rk.launch_dict)


def call_args(spec: AttentionSpec) -> dict:
    return dict(scale=spec.scale, causal=spec.causal, window=spec.window or 0, mask_kind=spec.mask.value)


def run_forward(kernel: LoadedKernel, spec: AttentionSpec, inp: AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward into NaN-prefilled out/lse buffers, so any element the kernel forgets to write shows up."""
    out = torch.full((spec.batch, spec.q_heads, spec.q_len, spec.v_head_dim), float("nan"), dtype=spec.torch_dtype)
    lse = torch.full((spec.batch, spec.q_heads, spec.q_len), float("nan"), dtype=torch.float32)
    return launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, inp.v, inp.mask, out=out, lse=lse,
                          **call_args(spec))


def snapshot(inp: AttentionInputs) -> list[torch.Tensor]:
    return [t.clone() for t in (inp.q, inp.k, inp.v, inp.mask) if t is not None]


def unchanged(inp: AttentionInputs, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip([t for t in (inp.q, inp.k, inp.v, inp.mask) if t is not None], before))


def fresh(spec: AttentionSpec) -> AttentionInputs:
    return make_inputs(spec)  # new OS seed every call
