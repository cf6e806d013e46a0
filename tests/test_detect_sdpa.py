"""SDPA call sites in every spelling, look-alikes that must be skipped with a reason, and rewrite_to_avo's call
(checked against the float64 reference of CONTRACTS.md by swapping the op for it after the rewrite)."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from avo_inductor.detect import rewrite_to_avo
from avo_inductor.spec import MaskKind
from detect_zoo import Cfg, HandAttention, SdpaAttention, compile_with

B, N, C = 2, 17, 32


def _mask(style: str, n: int = N) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(3)
    if style in ("positional", "bool_mask"):
        keep = torch.rand(B, 1, n, n, generator=g) > 0.3
        keep[..., 0] = True
        return keep
    if style == "float_mask":
        return torch.randn(B, 4, n, n, generator=g)
    if style == "padding":
        keep = torch.ones(B, 1, 1, n, dtype=torch.bool)
        keep[1, ..., n - 4:] = False
        return keep
    return None


SDPA_CASES = {
    "positional": ({}, {"mask": MaskKind.BOOL}),
    "bool_mask": ({}, {"mask": MaskKind.BOOL}),
    "float_mask": ({}, {"mask": MaskKind.BIAS}),
    "padding": ({}, {"mask": MaskKind.PADDING}),
    "causal": ({}, {"causal": True}),
    "scale": ({}, {"scale": 0.1}),
    "gqa_flag": ({"kv_heads": 2}, {"kv_heads": 2, "causal": True}),
    "gqa_repeat": ({"kv_heads": 1}, {"kv_heads": 1}),
    "ingraph_causal_mask": ({}, {"causal": True, "mask": MaskKind.NONE}),
}


@pytest.mark.parametrize("style", list(SDPA_CASES))
def test_sdpa_sites(style: str) -> None:
    kwargs, expect = SDPA_CASES[style]
    model = SdpaAttention(style, **kwargs).eval()
    x, mask = torch.randn(B, N, C), _mask(style)
    compiled, seen = compile_with(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, mask), model(x, mask), atol=1e-5, rtol=1e-5)
    (match,) = seen.matches
    assert match.pattern.startswith("sdpa") and match.module_path == ""
    want = {"q_heads": 4, "kv_heads": 4, "q_len": N, "kv_len": N, "scale": None, "causal": False,
            "mask": MaskKind.NONE, "dropout_p": 0.0}
    want.update(expect)
    assert {key: getattr(match.spec, key) for key in want} == pytest.approx(want)


def test_sdpa_dropout_train_and_causal_cross_lengths_skipped() -> None:
    model = SdpaAttention("causal", dropout=0.2).train()
    compiled, seen = compile_with(model)
    compiled(torch.randn(B, N, C))
    assert seen.matches[0].spec.dropout_p == pytest.approx(0.2) and seen.matches[0].spec.needs_grad
    # is_causal with Nq != Nk is top-left aligned in SDPA: not the kernel's causal, left alone with a reason
    compiled, seen = compile_with(SdpaAttention("causal").eval())
    with torch.no_grad():
        compiled(torch.randn(B, 5, C), None, torch.randn(B, 9, C))
    (skipped,) = seen.skipped
    assert not seen.matches and "top-left" in skipped.reason


class LookAlike(nn.Module):
    """Softmax over a matmul that is not (understood) attention: ``kind`` picks how."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.temp = kind, nn.Parameter(torch.tensor(0.5))
        self.head = nn.Linear(8, 8)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        s = q @ k.transpose(-2, -1)
        if self.kind == "softmax_dim":
            return s.softmax(dim=-2) @ v
        if self.kind == "tensor_temperature":
            return (s * self.temp).softmax(-1) @ v
        if self.kind == "fill_zero":
            return s.masked_fill(s > 1, 0.0).softmax(-1) @ v
        if self.kind == "probs_returned":
            p = s.softmax(-1)
            return p @ v, p
        return self.head(q).softmax(-1)  # classifier-style softmax: not attention at all


@pytest.mark.parametrize("kind,reason", [
    ("softmax_dim", "dim"), ("tensor_temperature", "tensor"), ("fill_zero", "masked_fill"),
    ("probs_returned", "outside"), ("classifier", None),
])
def test_look_alikes_are_skipped_with_a_reason(kind: str, reason: str | None) -> None:
    model = LookAlike(kind)
    q, k, v = (torch.randn(B, 4, N, 8) for _ in range(3))
    compiled, seen = compile_with(model)
    with torch.no_grad():
        out, ref = compiled(q, k, v), model(q, k, v)
    torch.testing.assert_close(out, ref)
    assert not seen.matches
    if reason is None:
        assert not seen.skipped
    else:
        (skipped,) = seen.skipped
        assert reason in skipped.reason


# ---- rewrite_to_avo ----------------------------------------------------------------------------------------
def _reference_op(q, k, v, mask, kernel_id, scale, causal, window, mask_kind):  # noqa: ANN001, ANN202
    from avo_inductor.kernels.reference import attention_reference

    return attention_reference(q, k, v, scale=scale, causal=causal, window=window or None, mask_kind=mask_kind,
                               mask=mask).to(q.dtype)


def _swap_for_reference(calls: list[tuple]) -> Callable[[fx.GraphModule], None]:
    def finalize(gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is torch.ops.avo.attention.default:
                calls.append(node.args[3:])
                node.target = _reference_op
        gm.recompile()
    return finalize


AVO_CASES = {
    "plain": (Cfg(), (None, "k1", False, 0, "none")),
    "causal_triu": (Cfg(mask="triu_buffer"), (None, "k1", True, 0, "none")),
    "window": (Cfg(mask="window", window=3), (None, "k1", True, 3, "none")),
    "padding": (Cfg(mask="padding"), ("mask", "k1", False, 0, "padding")),
    "bias": (Cfg(mask="bias", custom_scale=0.3), ("mask", "k1", False, 0, "bias")),
    "gqa": (Cfg(kv_heads=2, gqa="expand", mask="arange"), (None, "k1", True, 0, "none")),
    "bmm_3d": (Cfg(matmul="bmm"), (None, "k1", False, 0, "none")),
}


@pytest.mark.parametrize("name", list(AVO_CASES))
def test_rewrite_to_avo(name: str) -> None:
    pytest.importorskip("avo_inductor.kernels.op")  # registers torch.ops.avo.attention
    cfg, (mask, kernel_id, causal, window, kind) = AVO_CASES[name]
    model = HandAttention(cfg).eval()
    x = torch.randn(B, N, C)
    pad = torch.ones(B, N, dtype=torch.bool)
    pad[0, -6:] = False
    inputs = (x, pad) if cfg.mask == "padding" else (x,)
    calls: list[tuple] = []
    compiled, seen = compile_with(model, rewrite=lambda gm, m: rewrite_to_avo(gm, m, "k1"),
                                  finalize=_swap_for_reference(calls))
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)
    ((got_mask, got_id, got_scale, got_causal, got_window, got_kind),) = calls
    assert (got_id, got_causal, got_window, got_kind) == (kernel_id, causal, window, kind)
    assert (got_mask is None) == (mask is None)
    assert got_scale == pytest.approx(cfg.custom_scale or 8 ** -0.5)


def test_rewrite_to_avo_refuses_dropout() -> None:
    model = HandAttention(Cfg(dropout=0.1)).train()
    compiled, seen = compile_with(model, rewrite=None)
    compiled(torch.randn(B, N, C))
    (match,) = seen.matches
    with pytest.raises(ValueError, match="dropout"):
        rewrite_to_avo(seen.graphs[0], match, "k1")


class Stacked(nn.Module):
    """The second site's query is the first site's output: rewriting the first must keep the second's match valid."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v
        return F.scaled_dot_product_attention(a, k, v) + a


@pytest.mark.parametrize("to_avo", [False, True])
def test_stacked_sites_rewrite_in_sequence(to_avo: bool) -> None:
    q, k, v = (torch.randn(B, 4, N, 16) for _ in range(3))
    calls: list[tuple] = []
    if to_avo:
        pytest.importorskip("avo_inductor.kernels.op")
        compiled, seen = compile_with(Stacked(), rewrite=lambda gm, m: rewrite_to_avo(gm, m, "k1"),
                                      finalize=_swap_for_reference(calls))
    else:
        compiled, seen = compile_with(Stacked())
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k, v), Stacked()(q, k, v), atol=1e-5, rtol=1e-5)
    assert [m.pattern for m in seen.matches] == ["matmul_softmax", "sdpa"]
    assert len(calls) == (2 if to_avo else 0)


class BiasedBf16(nn.Module):
    """bf16 attention plus a float32 bias buffer: eager adds it to the bf16 scores in float32 (type promotion)."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = (q @ k.transpose(-2, -1)) * 0.25 + self.bias
        return torch.softmax(s, dim=-1).to(q.dtype) @ v


def test_rewrite_to_avo_keeps_a_float32_bias_float32_with_bf16_q() -> None:
    """Regression: rewrite_to_avo cast the bias to q's dtype. Values ~1e3 apart from each other by less than
    bf16's spacing there (4.0) lose every difference in bf16; the avo op must get the float32 bias and honour it
    against the float64 reference far better than a bf16-cast bias would."""
    from avo_inductor.kernels.baseline import baseline_record
    from avo_inductor.kernels.op import register_kernel
    from avo_inductor.kernels.reference import attention_reference, tolerance
    from avo_inductor.spec import AttentionSpec

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g).to(torch.bfloat16) for n in (16, 24, 24))
    bias = 1000.0 + 4.0 * torch.rand(1, 2, 16, 24, generator=g)
    kid = register_kernel(baseline_record(AttentionSpec(1, 2, 2, 16, 24, 16, dtype="bfloat16", mask="bias")))
    seen: list[tuple] = []

    def finalize(gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is torch.ops.avo.attention.default:
                seen.append((node.args[3].meta["example_value"].dtype, node.meta["example_value"]))

    compiled, _ = compile_with(BiasedBf16(bias), rewrite=lambda gm, m: rewrite_to_avo(gm, m, kid), finalize=finalize)
    with torch.no_grad():
        out = compiled(q, k, v)
    ((mask_dtype, fake_out),) = seen
    assert mask_dtype == torch.float32  # not cast to q's bf16
    assert fake_out is not None and fake_out.dtype == torch.bfloat16  # the fake impl takes a float32 bias too
    ref = attention_reference(q, k, v, scale=0.25, mask_kind="bias", mask=bias)
    cast = attention_reference(q, k, v, scale=0.25, mask_kind="bias", mask=bias.to(torch.bfloat16))
    err, cast_err = (out.double() - ref).abs().max(), (cast - ref).abs().max()
    atol, rtol = tolerance(torch.bfloat16)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    assert err * 10 < cast_err, (err, cast_err)


def test_rewrite_to_sdpa_still_casts_the_bias_to_q_dtype() -> None:
    """SDPA's fused kernels want the mask in the query's dtype: only the avo path keeps the bias's own dtype."""
    bias = torch.randn(1, 2, 16, 24)
    q, k, v = (torch.randn(1, 2, n, 16).to(torch.bfloat16) for n in (16, 24, 24))
    dtypes: list[torch.dtype] = []

    def finalize(gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
                dtypes.append(node.kwargs["attn_mask"].meta["example_value"].dtype)

    compiled, _ = compile_with(BiasedBf16(bias), finalize=finalize)
    with torch.no_grad():
        compiled(q, k, v)
    assert dtypes == [torch.bfloat16]
