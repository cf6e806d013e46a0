"""T5's learned relative-position bias: an additive ``bias`` site with scale 1 (T5 does not scale q k^T), run by the
avo op (baseline kernel, interpreter); in training the bias operand requires grad and its gradient reaches the
relative-attention-bias embedding through the op's autograd (the recompute backward returns d(bias))."""
from __future__ import annotations

import pytest
import torch

from avo_inductor.spec import MaskKind
from detect_zoo import avo_rewrite, compile_with

transformers = pytest.importorskip("transformers")
B, N, LAYERS = 2, 17, 2


def _t5(attn: str | None = None) -> torch.nn.Module:
    cfg = transformers.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=LAYERS, num_heads=4, vocab_size=100,
                                dropout_rate=0.0, relative_attention_num_buckets=8)
    if attn is None:
        return transformers.T5EncoderModel(cfg)
    return transformers.T5EncoderModel._from_config(cfg, attn_implementation=attn)


def _inputs(padded: bool) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (B, N), generator=torch.Generator().manual_seed(4))
    if not padded:
        return {"input_ids": ids}
    mask = torch.ones(B, N, dtype=torch.long)
    mask[1, 12:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("padded", [False, True])
def test_t5_encoder_relative_bias_site(padded: bool) -> None:
    torch.manual_seed(0)
    model = _t5().eval()
    kwargs = _inputs(padded)
    compiled, seen = compile_with(model, rewrite=avo_rewrite)
    with torch.no_grad():
        out = compiled(**kwargs).last_hidden_state
        ref = model(**kwargs).last_hidden_state
    assert len(seen.matches) == LAYERS and not seen.skipped, seen.sites
    assert seen.matches[0].module_path == "encoder.block.0.layer.0.SelfAttention"
    for match in seen.matches:
        want = {"batch": B, "q_heads": 4, "kv_heads": 4, "q_len": N, "head_dim": 8, "scale": 1.0, "causal": False,
                "window": None, "mask": MaskKind.BIAS}
        assert {key: getattr(match.spec, key) for key in want} == want
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_t5_training_bias_gradient_flows_through_the_avo_op() -> None:
    torch.manual_seed(0)
    model = _t5().train()
    kwargs = _inputs(padded=False)
    compiled, seen = compile_with(model, rewrite=avo_rewrite)
    out = compiled(**kwargs).last_hidden_state
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(out.square().mean(), params)
    ref_grads = torch.autograd.grad(model(**kwargs).last_hidden_state.square().mean(), params)
    assert all(m.spec.needs_grad and m.spec.mask is MaskKind.BIAS for m in seen.matches)
    bias_mask = [n for g in seen.graphs for n in g.graph.nodes if n.target is torch.ops.avo.attention.default]
    assert len(bias_mask) == LAYERS and all(n.args[3].meta["example_value"].requires_grad for n in bias_mask)
    table = names.index("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    assert grads[table].abs().sum() > 0
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("rewrite", ["sdpa", "avo"])
def test_t5_permuted_bias_reaches_the_kernel_with_unit_key_stride(rewrite: str) -> None:
    """T5 builds its bias by permuting an embedding lookup, so keys sit H elements apart. SDPA's fused kernels do
    not take such a mask (on an H100 a T5 encoder ran 0.60x Inductor with every site on SDPA's slow path) and a
    kernel would read it uncoalesced: the rewrite hands both a copy with consecutive keys adjacent."""
    from detect_zoo import rewrite_to_sdpa

    torch.manual_seed(0)
    model = _t5("eager").eval()  # the hand-written form (the default implementation calls SDPA on a copy)
    kwargs = _inputs(padded=False)
    compiled, seen = compile_with(model, rewrite=avo_rewrite if rewrite == "avo" else rewrite_to_sdpa)
    with torch.no_grad():
        out = compiled(**kwargs).last_hidden_state
        ref = model(**kwargs).last_hidden_state
    target = torch.ops.avo.attention.default if rewrite == "avo" else torch.nn.functional.scaled_dot_product_attention
    calls = [n for g in seen.graphs for n in g.graph.nodes if n.target is target]
    assert len(calls) == LAYERS
    for call in calls:
        mask = (call.args[3] if rewrite == "avo" else call.kwargs["attn_mask"]).meta["example_value"]
        assert mask.shape[-3:] == (4, N, N) and mask.stride(-1) == 1, (tuple(mask.shape), mask.stride())
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
