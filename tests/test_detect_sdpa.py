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
