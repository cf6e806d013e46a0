"""ALiBi detection: BLOOM (baddbmm on (B*H, N, D)), Falcon (alibi folded into the causal mask) and MPT built from tiny
configs are found as mask kind ``alibi`` with their slopes, and the avo op (baseline kernel, interpreter) given those
slopes matches eager, in inference and for BLOOM's training gradients; biases that only look like ALiBi stay biases."""
from __future__ import annotations

import math

import pytest
import torch

from avo_inductor.spec import MaskKind
from detect_zoo import AlibiAttention, compile_with, avo_rewrite

transformers = pytest.importorskip("transformers")
B, N, LAYERS, HEADS = 2, 17, 2, 4


def _bloom() -> torch.nn.Module:
    return transformers.BloomModel(transformers.BloomConfig(hidden_size=32, n_layer=LAYERS, n_head=HEADS,
                                                            vocab_size=100))


def _falcon() -> torch.nn.Module:
    cfg = transformers.FalconConfig(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                    vocab_size=100, alibi=True, multi_query=False, new_decoder_architecture=False,
                                    parallel_attn=False)
    return transformers.FalconModel(cfg)


def _mpt() -> torch.nn.Module:
    return transformers.MptModel(transformers.MptConfig(d_model=32, n_layers=LAYERS, n_heads=HEADS, vocab_size=100,
                                                        max_seq_len=64))


# model -> (factory, module path of layer 0, the factor detection puts on the graph's slopes)
MODELS = {
    "bloom": (_bloom, "h.0.self_attention", 1.0),
    "falcon": (_falcon, "h.0.self_attention", 1 / math.sqrt(8)),  # Falcon divides alibi by sqrt(head_dim)
    "mpt": (_mpt, "blocks.0.attn", 1.0),
}


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (B, N), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MODELS))
def test_alibi_model_detected_and_avo_matches_eager(name: str) -> None:
    factory, path0, factor = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    ids = _ids(1)
    compiled, seen = compile_with(model, rewrite=avo_rewrite)
    with torch.no_grad():
        out = compiled(ids).last_hidden_state
        ref = model(ids).last_hidden_state
    assert len(seen.matches) == LAYERS and not seen.skipped, seen.sites
    assert seen.matches[0].module_path == path0
    for match in seen.matches:
        want = {"batch": B, "q_heads": HEADS, "kv_heads": HEADS, "q_len": N, "kv_len": N, "head_dim": 8,
                "scale": None, "causal": True, "window": None, "mask": MaskKind.ALIBI}
        assert {key: getattr(match.spec, key) for key in want} == want
        assert match.pattern.endswith("[alibi]") and match.alibi_scale == pytest.approx(factor)
    assert sum(n.target is torch.ops.avo.attention.default for g in seen.graphs for n in g.graph.nodes) == LAYERS
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_bloom_sdpa_rewrite_keeps_the_bias_as_written() -> None:
    torch.manual_seed(0)
    model = _bloom().eval()
    ids = _ids(2)
    compiled, seen = compile_with(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids).last_hidden_state, model(ids).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)
    assert [m.spec.mask for m in seen.matches] == [MaskKind.ALIBI] * LAYERS


def test_bloom_training_gradients_through_the_avo_op() -> None:
    torch.manual_seed(0)
    model = _bloom().train()
    ids = _ids(3)
    compiled, seen = compile_with(model, rewrite=avo_rewrite)
    out = compiled(ids).last_hidden_state
    params = list(model.parameters())
    grads = torch.autograd.grad(out.square().mean(), params)
    ref = model(ids).last_hidden_state
    ref_grads = torch.autograd.grad(ref.square().mean(), params)
    assert all(m.spec.needs_grad and m.spec.mask is MaskKind.ALIBI for m in seen.matches)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


# style -> (mask kind, causal): the first three are ALiBi written three ways; the others only look like it
STYLES = {
    "kpos": (MaskKind.ALIBI, True),
    "relative": (MaskKind.ALIBI, True),
    "symmetric": (MaskKind.ALIBI, False),
    "kpos_full": (MaskKind.BIAS, False),  # slopes x key position without causal is not -slope x |i - j|
    "noise": (MaskKind.BIAS, True),
    "learned": (MaskKind.BIAS, True),
    "square": (MaskKind.BIAS, True),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_handwritten_alibi_is_verified_not_guessed(style: str) -> None:
    kind, causal = STYLES[style]
    torch.manual_seed(0)
    model = AlibiAttention(style)
    x = torch.randn(B, N, 32)
    compiled, seen = compile_with(model, rewrite=avo_rewrite if kind is MaskKind.ALIBI else None)
    with torch.no_grad():
        out = compiled(x)
        ref = model(x)
    (match,) = seen.matches
    assert (match.spec.mask, match.spec.causal) == (kind, causal)
    if kind is MaskKind.ALIBI:
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    elif style != "learned":  # learned slopes are not looked at: they need a gradient
        assert match.note.startswith("bias kept: not ALiBi"), match.note


def test_bloom_dynamic_lengths_run_the_same_site() -> None:
    torch.manual_seed(0)
    model = _bloom().eval()
    compiled, seen = compile_with(model, dynamic=True, rewrite=avo_rewrite)
    with torch.no_grad():
        for n in (17, 29):
            ids = torch.randint(0, 100, (B, n), generator=torch.Generator().manual_seed(n))
            torch.testing.assert_close(compiled(ids).last_hidden_state, model(ids).last_hidden_state,
                                       atol=1e-4, rtol=1e-4)
    assert len(seen.sites) == 1 and {"q_len", "kv_len"} <= set(seen.matches[0].spec.dynamic)
    assert all(m.spec.mask is MaskKind.ALIBI for m in seen.matches)


def test_bloom_padded_batch_keeps_alibi_as_a_bias_and_says_why() -> None:
    """Positions from the user's attention_mask (cumsum) cannot be checked at compile time: a bias, exact."""
    import avo_inductor

    torch.manual_seed(0)
    model = _bloom().eval()
    ids = _ids(6)
    mask = torch.ones(B, N, dtype=torch.long)
    mask[1, 12:] = 0
    compiled, seen = compile_with(model, rewrite=avo_rewrite)
    with torch.no_grad():
        out = compiled(ids, attention_mask=mask).last_hidden_state
        ref = model(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=1e-4)
    assert [(m.spec.mask, m.spec.causal) for m in seen.matches] == [(MaskKind.BIAS, True)] * LAYERS
    assert all(m.note.startswith("bias kept: not ALiBi") for m in seen.matches), [m.note for m in seen.matches]
    report = avo_inductor.explain(model, ids, attention_mask=mask, quiet=True)
    assert [r.module_path for r in report] == ["h.0.self_attention", "h.1.self_attention"]
    assert all("not ALiBi" in r.reason for r in report), [r.reason for r in report]


def test_a_windowed_bias_is_fitted_on_every_key_not_only_the_sampled_rows_windows() -> None:
    """A (1, H, 1, Nk) bias that is slopes x key position except at one key (no query dim, so every row reads it)
    under a 2-key window: the rows the fit samples at Nq = 1000 see only their own window, and the odd key is
    between them. It is not ALiBi (the row whose window holds that key would get a wrong logit)."""
    from avo_inductor.detect.alibi import _ROWS, _fit_values

    heads, n, window = 2, 1000, 2
    probe = torch.tensor([1e-3, 2e-3], dtype=torch.float64)
    value = probe.view(1, heads, 1, 1) * torch.arange(n, dtype=torch.float64).view(1, 1, 1, n)
    assert isinstance(_fit_values(value, probe, n, n, True, window), tuple)  # the true ALiBi fits
    sampled = torch.linspace(0, n - 1, _ROWS).round().long().unique()
    seen = {int(r) - d for r in sampled for d in range(window)}
    odd = next(k for k in range(n) if k not in seen)
    value[..., odd] += 0.5
    fit = _fit_values(value, probe, n, n, True, window)
    assert isinstance(fit, str) and "residual" in fit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(MODELS))
def test_alibi_detected_on_the_gpu_in_bf16(name: str) -> None:
    """The probe evaluation runs on the model's device: BLOOM on an H100 had every site kept as a plain bias
    ("could not be evaluated with probe slopes": a CPU probe against the CUDA arange), so no ALiBi kernel was
    ever looked up there."""
    factory, _, factor = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval().to("cuda", torch.bfloat16)
    compiled, seen = compile_with(model, rewrite=None)
    with torch.no_grad():
        compiled(_ids(1).cuda())
    assert len(seen.matches) == LAYERS and not seen.skipped, seen.sites
    for match in seen.matches:
        assert (match.spec.mask, match.spec.causal) == (MaskKind.ALIBI, True)
        assert match.alibi_scale == pytest.approx(factor)
