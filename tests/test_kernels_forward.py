"""Forward kernels (Triton interpreter, 16-wide tiles) against the float64 reference over a curated grid.

Each case: fresh random inputs, NaN-poisoned out/lse, inputs unchanged afterwards, per-dtype tolerance.
The grid covers every mask kind, GQA/MQA, odd head dims (40, 111, 160), dv != d, lengths 1/17/113 with
q_len != kv_len, all three dtypes and every genome knob the template renders.
"""
from __future__ import annotations

import pytest
import torch
from _kernel_cases import call_args, fresh, load, run_forward, snapshot, unchanged

from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.kernels.reference import attention_reference, tolerance
from avo_inductor.kernels.render import check_renderable, default_genome, render
from avo_inductor.spec import AttentionSpec

# The interpreter evaluates log(0) / -inf - -inf in masked-out lanes that tl.where then discards.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
# (hq, hkv, nq, nk, d, dv, dtype, causal, window, mask, knobs)
CASES = [
    (2, 2, 17, 17, 16, 16, "float16", False, None, "none", {}),
    (4, 2, 17, 113, 40, 40, "float16", True, None, "none", {}),
    (4, 1, 113, 17, 111, 111, "bfloat16", True, None, "none", {}),            # MQA, q_len > kv_len: empty rows
    (2, 2, 1, 113, 80, 80, "float32", False, None, "bias", {}),
    (2, 1, 17, 33, 64, 32, "float16", True, None, "bias", {"causal_split": False}),
    (2, 2, 33, 33, 96, 96, "bfloat16", False, None, "bool", {"exp2": False}),
    (4, 2, 17, 40, 160, 160, "float16", False, None, "padding", {}),
    (2, 2, 33, 47, 32, 32, "float32", True, 9, "none", {}),
    (2, 1, 20, 20, 16, 24, "float16", False, 5, "alibi", {"lazy_rescale": True}),
    (4, 4, 1, 70, 32, 32, "bfloat16", False, None, "none", {"kv_splits": 4}),  # decode split-kv + reduce
    (2, 1, 5, 37, 48, 48, "float16", True, None, "bool", {"kv_splits": 2, "persistent": True}),
    (2, 2, 32, 48, 32, 32, "float16", True, None, "alibi", {"even_fast_path": True, "persistent": True}),
    (2, 2, 32, 32, 192, 192, "float16", True, None, "none", {"block_m": 32}),  # even lengths, d=192
    (2, 2, 17, 17, 224, 16, "float32", False, None, "none", {"exp2": False, "lazy_rescale": True}),
]


@pytest.mark.parametrize("hq,hkv,nq,nk,d,dv,dtype,causal,window,mask,knobs", CASES)
def test_forward_matches_reference(hq, hkv, nq, nk, d, dv, dtype, causal, window, mask, knobs):
    spec = AttentionSpec(2 if nq < 64 else 1, hq, hkv, nq, nk, d, v_head_dim=dv, dtype=dtype, causal=causal,
                         window=window, mask=mask)
    kernel = load(spec, **knobs)
    inp = fresh(spec)
    before = snapshot(inp)
    out, lse = run_forward(kernel, spec, inp)
    ref = attention_reference(inp.q, inp.k, inp.v, mask=inp.mask, **call_args(spec))
    assert out.dtype == spec.torch_dtype and not torch.isnan(out).any() and not torch.isnan(lse).any()
    atol, rtol = tolerance(dtype)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    assert unchanged(inp, before)


def test_lse_is_logsumexp_and_inf_for_empty_rows():
    spec = AttentionSpec(1, 2, 2, 20, 17, 16, dtype="float32", causal=True, scale=0.25)
    inp = fresh(spec)
    _, lse = run_forward(load(spec), spec, inp)
    s = (inp.q.double() @ inp.k.double().transpose(-1, -2)) * 0.25
    keep = torch.arange(17)[None, :] <= torch.arange(20)[:, None] - 3
    ref = torch.logsumexp(s.masked_fill(~keep, float("-inf")), -1)
    assert torch.isposinf(lse[:, :, :3]).all()
    torch.testing.assert_close(lse[:, :, 3:].double(), ref[:, :, 3:], atol=1e-5, rtol=1e-5)


def test_result_changes_with_inputs():
    spec = AttentionSpec(1, 2, 2, 17, 17, 16, dtype="float16")
    kernel = load(spec)
    a, b = fresh(spec), fresh(spec)
    assert not torch.equal(run_forward(kernel, spec, a)[0], run_forward(kernel, spec, b)[0])


def test_render_marks_evolve_block_and_knobs():
    spec = AttentionSpec(1, 2, 2, 64, 64, 64, causal=True)
    g = KernelGenome(exp2=False, lazy_rescale=True, kv_splits=2)
    rk = render(g, spec)
    assert "# EVOLVE-BLOCK-START" in rk.source and "# EVOLVE-BLOCK-END" in rk.source
    assert "USE_EXP2 = tl.constexpr(False)" in rk.source and "LAZY_RESCALE = tl.constexpr(True)" in rk.source
    assert rk.launch["grid"] == "splitkv" and rk.launch["kv_splits"] == 2
    assert render(g.replace(persistent=True), spec).launch["grid"] == "persistent"


@pytest.mark.parametrize("genome,spec_kw,match", [
    (KernelGenome(use_tma=True), {}, "use_tma"),
    (KernelGenome(template="flash_v9"), {}, "template"),
    (KernelGenome(), {"dropout_p": 0.1}, "dropout"),
    (KernelGenome(), {"head_dim": 320}, "head dim"),
])
def test_render_rejects_what_it_cannot_honour(genome, spec_kw, match):
    spec = AttentionSpec(**{**dict(batch=1, q_heads=2, kv_heads=2, q_len=16, kv_len=16, head_dim=64), **spec_kw})
    with pytest.raises(ValueError, match=match):
        check_renderable(genome, spec)


def test_default_genome_valid_for_gpu_and_cpu():
    from avo_inductor.spec import HardwareKey

    h100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
    for d in (40, 128, 256):
        for nq, nk in ((1, 4096), (4096, 4096), (17, 17)):
            spec = AttentionSpec(1, 8, 2, nq, nk, d, needs_grad=True)
            g = default_genome(spec, h100)
            render(g, spec)
            assert g.block_m <= max(16, 1 << (nq - 1).bit_length())
    assert default_genome(AttentionSpec(1, 8, 8, 1, 8192, 128), h100).kv_splits > 1
