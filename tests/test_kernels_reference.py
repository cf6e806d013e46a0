"""The float64 reference against SDPA and brute force, input generation, tolerances, and the recompute fallback."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avo_inductor.kernels import fallback
from avo_inductor.kernels.reference import (
    additive_mask, alibi_slopes, allowed_keys, attention_reference, make_inputs, reference_grads, tolerance,
)
from avo_inductor.spec import AttentionSpec


def _sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=attn_mask,
                                          is_causal=is_causal, scale=scale)


@pytest.mark.parametrize("nq,nk", [(5, 5), (3, 9), (1, 7)])
def test_causal_matches_sdpa_bottom_right(nq, nk):
    spec = AttentionSpec(2, 4, 2, nq, nk, 8, dtype="float32", causal=True)
    x = make_inputs(spec)
    keep = allowed_keys(nq, nk, True, None)
    ref = _sdpa(x.q, x.k, x.v, attn_mask=keep)
    torch.testing.assert_close(attention_reference(x.q, x.k, x.v, causal=True), ref)
    # bottom-right: the last query sees every key
    assert bool(keep[-1].all()) and int(keep[0].sum()) == nk - nq + 1


def test_window_is_banded_and_causal():
    keep = allowed_keys(6, 8, causal=False, window=3)
    for i in range(6):
        for j in range(8):
            assert bool(keep[i, j]) == (i + 2 - 3 < j <= i + 2)


@pytest.mark.parametrize("kind", ["bias", "bool", "padding", "alibi"])
def test_mask_kinds_match_sdpa(kind):
    spec = AttentionSpec(2, 4, 4, 6, 10, 16, dtype="float32", mask=kind)
    x = make_inputs(spec)
    add = additive_mask(2, 4, 6, 10, mask_kind=kind, mask=x.mask)
    got = attention_reference(x.q, x.k, x.v, mask_kind=kind, mask=x.mask)
    rows_ok = ~torch.isneginf(add).all(-1, keepdim=True).expand_as(add)[..., :1]
    ref = _sdpa(x.q, x.k, x.v, attn_mask=add)
    ref = torch.where(rows_ok.expand_as(ref), ref, torch.zeros_like(ref))
    torch.testing.assert_close(got, ref)


def test_alibi_formula():
    s = alibi_slopes(4)
    add = additive_mask(1, 4, 3, 5, mask_kind="alibi", mask=s)
    assert add[0, 2, 1, 0].item() == pytest.approx(-s[2].item() * 3)  # i + (5 - 3) - j = 3


def test_empty_rows_give_zero_and_finite_grads():
    spec = AttentionSpec(1, 2, 2, 4, 3, 8, dtype="float32", causal=True)  # q_len > kv_len: row 0 sees no key
    x = make_inputs(spec)
    out = attention_reference(x.q, x.k, x.v, causal=True)
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))
    grads = reference_grads(x.q, x.k, x.v, torch.randn_like(out), causal=True)
    assert all(torch.isfinite(g).all() for g in grads)


def test_gqa_equals_repeated_heads():
    spec = AttentionSpec(1, 6, 2, 5, 7, 8, dtype="float32")
    x = make_inputs(spec)
    rep = attention_reference(x.q, x.k.repeat_interleave(3, 1), x.v.repeat_interleave(3, 1))
    torch.testing.assert_close(attention_reference(x.q, x.k, x.v), rep)


def test_make_inputs_fresh_and_typed():
    spec = AttentionSpec(2, 4, 2, 3, 5, 8, v_head_dim=12, dtype="bfloat16", mask="padding")
    a, b = make_inputs(spec), make_inputs(spec)
    assert a.q.dtype == torch.bfloat16 and a.v.shape == (2, 2, 5, 12) and a.mask.shape == (2, 5)
    assert not torch.equal(a.q, b.q) and (a.q != 0).any()
    assert a.mask.any(-1).all()  # every batch keeps at least one key
    assert torch.equal(make_inputs(spec, seed=3).q, make_inputs(spec, seed=3).q)


def test_tolerance_per_dtype():
    assert tolerance("float32")[0] < tolerance(torch.float16)[0] < tolerance("bfloat16")[0]
    assert tolerance("float16", grad=True)[0] > tolerance("float16")[0]
    with pytest.raises(ValueError):
        tolerance(torch.int32)


@pytest.mark.parametrize("kind,causal,window", [("none", True, None), ("bias", True, None), ("alibi", False, 4),
                                                ("bool", False, None), ("padding", True, None)])
def test_recompute_fallback_matches_reference(kind, causal, window):
    spec = AttentionSpec(2, 4, 2, 5, 9, 16, v_head_dim=8, dtype="float32", causal=causal, window=window, mask=kind)
    x = make_inputs(spec)
    args = dict(scale=0.3, causal=causal, window=window or 0, mask_kind=kind)
    out, lse = fallback.recompute_forward(x.q, x.k, x.v, x.mask, **args)
    torch.testing.assert_close(out.double(), attention_reference(x.q, x.k, x.v, mask=x.mask, **args), atol=1e-5, rtol=1e-5)
    assert lse.dtype == torch.float32 and not torch.isnan(lse).any()
    do = torch.randn_like(out)
    got = fallback.recompute_backward(do, x.q, x.k, x.v, x.mask, **args)[:3]
    for g, r in zip(got, reference_grads(x.q, x.k, x.v, do, mask=x.mask, **args)):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def test_recompute_fallback_bias_grad():
    spec = AttentionSpec(1, 2, 2, 4, 6, 8, dtype="float32", mask="bias")
    x = make_inputs(spec)
    bias = x.mask[:, :1].clone().requires_grad_(True)  # broadcast over heads
    out = attention_reference(x.q, x.k, x.v, mask_kind="bias", mask=bias, scale=0.5)
    do = torch.randn_like(out)
    (ref,) = torch.autograd.grad(out, bias, do)
    dmask = fallback.recompute_backward(do.float(), x.q, x.k, x.v, bias.detach(), scale=0.5, causal=False, window=0,
                                        mask_kind="bias", mask_needs_grad=True)[3]
    assert dmask.shape == bias.shape
    torch.testing.assert_close(dmask.double(), ref.double(), atol=1e-5, rtol=1e-4)
    assert math.isfinite(dmask.abs().max().item())


def test_bf16_alibi_mask_is_built_in_fp32_and_sdpa_on_it_matches_float64():
    """Regression (H100): built directly in bf16, ALiBi's positions above 256 were rounded (spacing 2 above 256,
    4 above 512), the distances were wrong and SDPA given that mask was off by 2.9 at N=2048."""
    spec = AttentionSpec(1, 8, 8, 640, 640, 16, dtype="bfloat16", mask="alibi")
    x = make_inputs(spec, seed=0)
    mask = additive_mask(1, 8, 640, 640, mask_kind="alibi", mask=x.mask, dtype=torch.bfloat16)
    fp32 = additive_mask(1, 8, 640, 640, mask_kind="alibi", mask=x.mask, dtype=torch.float32)
    assert mask.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    assert torch.equal(mask, fp32.to(torch.bfloat16))
    exact = additive_mask(1, 8, 640, 640, mask_kind="alibi", mask=x.mask)  # float64
    assert torch.allclose(mask.double(), exact, rtol=2 ** -8, atol=0)
    out = F.scaled_dot_product_attention(x.q, x.k, x.v, attn_mask=mask, scale=spec.effective_scale)
    ref = attention_reference(x.q, x.k, x.v, scale=spec.effective_scale, mask_kind="alibi", mask=x.mask)
    atol, rtol = tolerance(torch.bfloat16)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("kind", ["bias", "bool", "padding", "alibi"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_mask_kind_is_its_fp32_mask_cast(kind, dtype):
    spec = AttentionSpec(2, 4, 4, 300, 520, 16, dtype="bfloat16", mask=kind, causal=True, window=400)
    x = make_inputs(spec, seed=1)
    args = dict(causal=True, window=400, mask_kind=kind, mask=x.mask)
    got = additive_mask(2, 4, 300, 520, dtype=dtype, **args)
    assert got.dtype == dtype
    assert torch.equal(got, additive_mask(2, 4, 300, 520, dtype=torch.float32, **args).to(dtype))


@pytest.mark.parametrize("kind", ["none", "bias", "bool", "padding", "alibi"])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2)])
def test_chunked_reference_and_grads_equal_the_whole_ones(monkeypatch, kind, hq, hkv):
    """Large targets are referenced one (batch, GQA-group run) slice at a time; the slices must see exactly the
    mask entries (broadcast dims included) and kv heads the whole computation would."""
    from avo_inductor.kernels import reference
    from avo_inductor.kernels.reference import attention_math, attention_reference, make_inputs

    spec = AttentionSpec(3, hq, hkv, 17, 29, 8, dtype="float32", causal=kind == "none", mask=kind)
    x = make_inputs(spec, "cpu", seed=5)
    whole = attention_math(x.q, x.k, x.v, causal=spec.causal, mask_kind=kind, mask=x.mask)
    do = torch.randn(3, hq, 17, 8)
    whole_grads = reference.reference_grads(x.q, x.k, x.v, do, causal=spec.causal, mask_kind=kind, mask=x.mask)
    monkeypatch.setattr(reference, "REFERENCE_CHUNK_BYTES", 17 * 29 * 8 * hq // hkv)  # one group per slice
    sliced = attention_reference(x.q, x.k, x.v, causal=spec.causal, mask_kind=kind, mask=x.mask)
    torch.testing.assert_close(sliced, whole, rtol=1e-12, atol=1e-12)  # float64 matmul blocking may differ
    # gradients too (verifying a shipped 4k record at its own shape needs them sliced): dk/dv per kv head
    sliced_grads = reference.reference_grads(x.q, x.k, x.v, do, causal=spec.causal, mask_kind=kind, mask=x.mask)
    for got, want in zip(sliced_grads, whole_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
