"""Hand-written attention: each graph shape is found with the right spec, and rewrite_to_sdpa keeps outputs
(and gradients in train mode) equal to eager, for static and dynamic shapes and ragged lengths."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avo_inductor.spec import MaskKind
from detect_zoo import Cfg, HandAttention, compile_with, count_calls, no_softmax_left

B, N, C = 2, 17, 32

# name -> (config, expected spec fields)
CASES: dict[str, tuple[Cfg, dict]] = {
    "plain": (Cfg(), {}),
    "scores_div": (Cfg(scale_on="scores_div"), {}),
    "scale_on_q": (Cfg(scale_on="q", matmul="matmul"), {}),
    "scale_on_k": (Cfg(scale_on="k"), {}),
    "scale_on_qk_custom": (Cfg(scale_on="qk", custom_scale=0.2), {"scale": 0.2}),
    "triu_buffer": (Cfg(mask="triu_buffer"), {"causal": True}),
    "tril_buffer_nanogpt": (Cfg(mask="tril_buffer"), {"causal": True}),
    "ingraph_tril_finfo_min": (Cfg(mask="ingraph_tril"), {"causal": True}),
    "arange_where": (Cfg(mask="arange", matmul="matmul"), {"causal": True}),
    "additive_inf": (Cfg(mask="additive_inf"), {"causal": True}),
    "sliding_window": (Cfg(mask="window", window=5), {"causal": True, "window": 5}),
    "bias": (Cfg(mask="bias"), {"mask": MaskKind.BIAS}),
    "bias_then_scale": (Cfg(mask="bias", scale_on="after_mask", custom_scale=0.5), {"mask": MaskKind.BIAS, "scale": 0.5}),
    "padding": (Cfg(mask="padding"), {"mask": MaskKind.PADDING}),
    "gqa_repeat_interleave": (Cfg(kv_heads=2, gqa="repeat_interleave", mask="triu_buffer"), {"kv_heads": 2, "causal": True}),
    "gqa_expand_fp32": (Cfg(kv_heads=1, gqa="expand", softmax="dtype"), {"kv_heads": 1}),
    "fp32_softmax_cast": (Cfg(softmax="float", mask="arange"), {"causal": True}),
    "softmax_method": (Cfg(softmax="method"), {}),
    "bmm_3d": (Cfg(matmul="bmm", mask="ingraph_tril"), {"batch": 1, "q_heads": B * 4, "kv_heads": B * 4, "causal": True}),
    "baddbmm_3d": (Cfg(matmul="baddbmm", scale_on="q"), {"batch": 1, "q_heads": B * 4, "kv_heads": B * 4}),
}
TRAIN = ["plain", "triu_buffer", "gqa_repeat_interleave", "padding", "sliding_window", "bias"]
DYNAMIC = ["tril_buffer_nanogpt", "arange_where", "gqa_expand_fp32", "padding", "sliding_window", "additive_inf"]


def _inputs(cfg: Cfg, n: int = N, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, C, generator=g)
    if cfg.mask != "padding":
        return (x,)
    pad = torch.ones(B, n, dtype=torch.bool)
    pad[1, n - 5:] = False
    return x, pad


def _check_spec(spec, cfg: Cfg, expect: dict, n: int = N) -> None:
    want = {"batch": B, "q_heads": cfg.heads, "kv_heads": cfg.heads, "q_len": n, "kv_len": n, "head_dim": 8,
            "v_head_dim": 8, "dtype": "float32", "scale": None, "causal": False, "window": None,
            "mask": MaskKind.NONE, "dropout_p": 0.0}
    want.update(expect)
    got = {key: getattr(spec, key) for key in want}
    assert got == pytest.approx(want), f"{got} != {want}"


@pytest.mark.parametrize("name", list(CASES))
def test_detect_and_rewrite_eval(name: str) -> None:
    cfg, expect = CASES[name]
    model = HandAttention(cfg).eval()
    inputs = _inputs(cfg)
    compiled, seen = compile_with(model)
    with torch.no_grad():
        out, ref = compiled(*inputs), model(*inputs)
    assert len(seen.matches) == 1 and not seen.skipped, seen.sites
    match = seen.matches[0]
    _check_spec(match.spec, cfg, expect)
    assert match.spec.needs_grad is False
    gm = seen.graphs[0]
    assert count_calls(gm, F.scaled_dot_product_attention) == 1 and no_softmax_left(gm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TRAIN)
def test_rewrite_train_gradients(name: str) -> None:
    cfg, expect = CASES[name]
    model = HandAttention(cfg).train()  # dropout p = 0: gradients are deterministic
    compiled, seen = compile_with(model)
    inputs = _inputs(cfg)
    x1, x2 = inputs[0].clone().requires_grad_(), inputs[0].clone().requires_grad_()
    out = compiled(x1, *inputs[1:])
    grads = torch.autograd.grad(out.square().sum(), [x1, *model.parameters()], allow_unused=True)
    ref = model(x2, *inputs[1:])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x2, *model.parameters()], allow_unused=True)
    assert seen.matches[0].spec.needs_grad is True
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_shapes(name: str) -> None:
    cfg, expect = CASES[name]
    model = HandAttention(cfg).eval()
    compiled, seen = compile_with(model, dynamic=True)
    with torch.no_grad():
        for n, seed in ((N, 0), (11, 1)):
            inputs = _inputs(cfg, n, seed)
            torch.testing.assert_close(compiled(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)
    assert len(seen.sites) == 1, "a second length must reuse the graph"
    spec = seen.matches[0].spec
    _check_spec(spec, cfg, expect)
    assert {"q_len", "kv_len"} <= set(spec.dynamic)


def test_dropout_in_training_is_detected() -> None:
    model = HandAttention(Cfg(dropout=0.3, mask="triu_buffer")).train()
    compiled, seen = compile_with(model)
    out = compiled(*_inputs(model.cfg))
    assert seen.matches[0].spec.dropout_p == pytest.approx(0.3) and "[dropout]" in seen.matches[0].pattern
    assert out.shape == (B, N, C) and torch.isfinite(out).all()
    with torch.no_grad():
        compiled_eval, seen_eval = compile_with(model.eval())
        compiled_eval(*_inputs(model.cfg))
    assert seen_eval.matches[0].spec.dropout_p == 0.0


def test_cross_attention_ragged_lengths() -> None:
    model = HandAttention(Cfg()).eval()
    x, kv = torch.randn(B, 17, C), torch.randn(B, 9, C)
    compiled, seen = compile_with(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, None, kv), model(x, None, kv), atol=1e-5, rtol=1e-5)
    spec = seen.matches[0].spec
    assert (spec.q_len, spec.kv_len, spec.causal) == (17, 9, False)


def test_bottom_right_causal_with_cache_offset() -> None:
    """5 new queries over 12 keys: the in-graph mask is causal bottom-right; SDPA needs an explicit mask then."""
    model = HandAttention(Cfg(mask="decode_causal")).eval()
    x, kv = torch.randn(B, 5, C), torch.randn(B, 12, C)
    compiled, seen = compile_with(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, None, kv), model(x, None, kv), atol=1e-5, rtol=1e-5)
    match = seen.matches[0]
    assert (match.spec.q_len, match.spec.kv_len, match.causal, match.mask_kind) == (5, 12, True, MaskKind.NONE)


def test_bf16_causal_gqa_with_fp32_softmax() -> None:
    """The shape DESIGN.md measured Inductor leaving unfused: causal GQA, repeat_interleave, fp32 softmax, bf16."""
    model = HandAttention(Cfg(kv_heads=2, gqa="repeat_interleave", mask="triu_buffer", softmax="float")).eval()
    model = model.to(torch.bfloat16)
    x = torch.randn(B, N, C, dtype=torch.bfloat16)
    compiled, seen = compile_with(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=2e-2, rtol=2e-2)
    (match,) = seen.matches
    assert match.pattern == "matmul_softmax[fp32][gqa]"
    assert (match.spec.dtype, match.spec.kv_heads, match.spec.causal) == ("bfloat16", 2, True)
