"""Triton backward (dq, dk, dv) against float64 autograd of the reference, on the interpreter with 16-wide tiles.

NaN-poisoned gradient buffers, fresh inputs, unchanged inputs; GQA checks that dk/dv sum over the group.
"""
from __future__ import annotations

import pytest
import torch
from _kernel_cases import CPU, call_args, fresh, load, run_forward, snapshot, unchanged

from avo_inductor.kernels import launch
from avo_inductor.kernels.reference import reference_grads, tolerance
from avo_inductor.spec import AttentionSpec

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# (hq, hkv, nq, nk, d, dv, dtype, causal, window, mask, knobs)
CASES = [
    (4, 2, 17, 33, 40, 40, "float16", True, None, "none", {}),
    (2, 1, 33, 17, 111, 64, "float32", True, None, "bias", {"exp2": False}),  # q_len > kv_len: empty rows
    (2, 2, 1, 40, 32, 32, "bfloat16", False, None, "padding", {}),
    (3, 1, 20, 20, 16, 16, "float16", False, 6, "alibi", {}),
    (2, 2, 17, 29, 24, 24, "float32", False, None, "bool", {}),
    (2, 2, 32, 32, 64, 64, "float16", True, None, "none", {"even_fast_path": True}),
    # packed-GQA forward (its LSE/out in the unpacked layouts) feeding the unpacked backward
    (8, 2, 9, 29, 40, 40, "float32", True, None, "bias", {"pack_gqa": True}),
    (4, 1, 3, 37, 24, 24, "bfloat16", False, 10, "alibi", {"pack_gqa": True, "kv_splits": 2}),
    # dK/dV from S^T (bwd_transposed) and dq with swapped tiles (bwd_dq_swap), over every mask kind
    (4, 2, 17, 33, 40, 40, "float16", True, None, "none", {"bwd_transposed": True}),
    (2, 1, 33, 17, 111, 64, "float32", True, None, "bias", {"bwd_transposed": True, "exp2": False}),
    (2, 2, 1, 40, 32, 32, "bfloat16", False, None, "padding", {"bwd_transposed": True, "bwd_dq_swap": True,
                                                               "bwd_block_n": 32}),
    (3, 1, 20, 20, 16, 16, "float16", False, 6, "alibi", {"bwd_transposed": True, "bwd_dq_swap": True,
                                                          "bwd_block_n": 32}),
    (2, 2, 17, 29, 24, 24, "float32", False, None, "bool", {"bwd_transposed": True}),
    (2, 2, 64, 64, 64, 64, "float16", True, None, "none", {"bwd_transposed": True, "bwd_dq_swap": True,
                                                           "bwd_block_n": 32, "even_fast_path": True}),
    (4, 2, 113, 100, 72, 72, "bfloat16", True, 40, "none", {"bwd_dq_swap": True, "bwd_block_n": 32}),
    # causal loops unsplit (every tile masked), and split with the heaviest dq tiles first
    (4, 2, 113, 100, 40, 40, "float16", True, None, "bias", {"causal_split": False}),
    (2, 1, 113, 300, 24, 24, "bfloat16", True, None, "none", {"causal_split": False, "bwd_transposed": True}),
    (4, 2, 300, 113, 40, 40, "float32", True, 100, "alibi", {"heavy_first": True, "bwd_transposed": True,
                                                              "bwd_block_n": 32}),
    (2, 2, 64, 64, 64, 64, "float16", True, None, "none", {"heavy_first": True, "even_fast_path": True}),
    # dq accumulated atomically by the dK/dV kernel (no dq kernel), both dK/dV forms, GQA, masks, windows
    (4, 2, 17, 33, 40, 40, "float16", True, None, "bias", {"bwd_dq_atomic": True}),
    (4, 2, 33, 17, 24, 24, "float32", True, 5, "alibi", {"bwd_dq_atomic": True, "bwd_transposed": True}),
    (2, 2, 20, 37, 16, 16, "bfloat16", False, None, "padding", {"bwd_dq_atomic": True, "bwd_transposed": True}),
    # ... added through a tensor descriptor (bwd_dq_tma): ragged rows past the descriptor, odd head dims (padded rows)
    (4, 2, 17, 33, 40, 40, "float16", True, None, "bias", {"bwd_dq_atomic": True, "bwd_dq_tma": True}),
    (2, 1, 113, 100, 17, 17, "float32", True, 40, "none", {"bwd_dq_atomic": True, "bwd_dq_tma": True,
                                                             "bwd_transposed": True}),
    (2, 2, 1, 37, 24, 24, "bfloat16", False, None, "padding", {"bwd_dq_atomic": True, "bwd_dq_tma": True}),
]


@pytest.mark.parametrize("hq,hkv,nq,nk,d,dv,dtype,causal,window,mask,knobs", CASES)
def test_backward_matches_reference(hq, hkv, nq, nk, d, dv, dtype, causal, window, mask, knobs):
    spec = AttentionSpec(2, hq, hkv, nq, nk, d, v_head_dim=dv, dtype=dtype, causal=causal, window=window, mask=mask)
    kernel = load(spec, **knobs)
    inp = fresh(spec)
    out, lse = run_forward(kernel, spec, inp)
    do = torch.randn_like(out)
    before = snapshot(inp) + [out.clone(), lse.clone(), do.clone()]
    bufs = {n: torch.full_like(t, float("nan")) for n, t in (("dq", inp.q), ("dk", inp.k), ("dv", inp.v))}
    got = launch.backward(kernel.functions, kernel.launch, do, inp.q, inp.k, inp.v, out, lse, inp.mask, **bufs,
                          **call_args(spec))
    refs = reference_grads(inp.q, inp.k, inp.v, do, mask=inp.mask, **call_args(spec))
    atol, rtol = tolerance(dtype, grad=True)
    for name, g, r in zip(("dq", "dk", "dv"), got, refs):
        assert g.shape == r.shape and g.dtype == spec.torch_dtype, name
        assert not torch.isnan(g).any(), f"{name} has unwritten (NaN) elements"
        torch.testing.assert_close(g.double(), r, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
    assert unchanged(inp, before[: len(before) - 3])
    assert all(torch.equal(a, b) for a, b in zip((out, lse, do), before[-3:]))


def test_backward_without_entry_point_is_a_clear_error():
    spec = AttentionSpec(1, 2, 2, 17, 17, 16, dtype="float32")
    kernel = load(spec)
    fns = launch.KernelFunctions(fwd=kernel.functions.fwd)
    inp = fresh(spec)
    with pytest.raises(RuntimeError, match="recompute fallback"):
        launch.backward(fns, kernel.launch, inp.q, inp.q, inp.k, inp.v, inp.q, inp.q[..., 0], None, **call_args(spec))


def test_dq_swap_launches_dq_with_the_tiles_swapped(monkeypatch):
    """bwd_dq_swap: dk/dv keep (BWD_BLOCK_M, BWD_BLOCK_N), dq takes (BWD_BLOCK_N, BWD_BLOCK_M); old records
    (no key) keep one tile pair for both; the key is a strict bool and passes the static gate."""
    from avo_inductor.kernels.launch import LaunchConfig
    from avo_inductor.kernels.loader import static_violations
    from avo_inductor.kernels.render import default_genome, render

    seen = []
    real = launch._launch

    def recording(fn, grid, **kw):  # type: ignore[no-untyped-def]
        seen.append((fn.__name__, grid, kw.get("BLOCK_M"), kw.get("BLOCK_N")))
        real(fn, grid, **kw)

    monkeypatch.setattr(launch, "_launch", recording)
    spec = AttentionSpec(1, 2, 2, 40, 40, 16, dtype="float32", causal=True)
    for swap, dq in ((True, ("attn_bwd_dq", (2, 2), 32, 16)), (False, ("attn_bwd_dq", (3, 2), 16, 32))):
        kernel = load(spec, bwd_block_m=16, bwd_block_n=32, bwd_dq_swap=swap, bwd_transposed=True)
        inp = fresh(spec)
        out, lse = run_forward(kernel, spec, inp)
        seen.clear()
        launch.backward(kernel.functions, kernel.launch, torch.randn_like(out), inp.q, inp.k, inp.v, out, lse, None,
                        **call_args(spec))
        assert seen[1] == ("attn_bwd_dkdv", (2, 2), 16, 32) and seen[2] == dq, seen
    rk = render(default_genome(spec, CPU).replace(bwd_dq_swap=True), spec)
    assert rk.launch_dict["bwd_dq_swap"] is True and static_violations(rk.source, rk.entry_point, rk.bwd_entry_point,
                                                                   rk.launch_dict) == []
    assert not LaunchConfig.from_dict({k: v for k, v in rk.launch_dict.items() if k != "bwd_dq_swap"}).bwd_dq_swap
    with pytest.raises(ValueError, match="bwd_dq_swap must be a bool"):
        LaunchConfig.from_dict({**rk.launch_dict, "bwd_dq_swap": 1})


def test_dq_atomic_launches_no_dq_kernel_and_fills_the_callers_buffer(monkeypatch):
    """bwd_dq_atomic: the preprocess and dK/dV kernels only, dK/dV given a zeroed fp32 DQ; the caller's
    (NaN-poisoned) dq buffer receives the result; old records (no key) keep the dq kernel; the key is a strict bool."""
    from avo_inductor.kernels.launch import LaunchConfig

    seen = []
    real = launch._launch

    def recording(fn, grid, **kw):  # type: ignore[no-untyped-def]
        seen.append((fn.__name__, kw["DQ"].dtype if "DQ" in kw else None))
        real(fn, grid, **kw)

    monkeypatch.setattr(launch, "_launch", recording)
    spec = AttentionSpec(1, 2, 2, 40, 40, 16, dtype="float16", causal=True)
    kernel = load(spec, bwd_dq_atomic=True)
    inp = fresh(spec)
    out, lse = run_forward(kernel, spec, inp)
    seen.clear()
    dq = torch.full_like(inp.q, float("nan"))
    got = launch.backward(kernel.functions, kernel.launch, torch.randn_like(out), inp.q, inp.k, inp.v, out, lse,
                          None, dq=dq, **call_args(spec))
    assert seen == [("attn_bwd_preprocess", None), ("attn_bwd_dkdv", torch.float32)], seen
    assert got[0] is dq and not torch.isnan(dq).any()
    legacy = {k: v for k, v in kernel.launch.__dict__.items()}
    assert LaunchConfig(**{**legacy, "bwd_dq_atomic": False}).bwd_dq_atomic is False
    with pytest.raises(ValueError, match="bwd_dq_atomic must be a bool"):
        LaunchConfig(**{**legacy, "bwd_dq_atomic": "yes"})
