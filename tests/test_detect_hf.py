"""Hugging Face models (random-init tiny configs, no downloads) with eager and SDPA attention: every layer's site
is found with the model's spec, and rewrite_to_sdpa keeps outputs equal to eager."""
from __future__ import annotations

import pytest
import torch

from avo_inductor.spec import MaskKind
from detect_zoo import compile_with

transformers = pytest.importorskip("transformers")
B, N, LAYERS = 2, 17, 2


def _gpt2(impl: str) -> torch.nn.Module:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=LAYERS, n_head=4, vocab_size=100, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, attn_implementation=impl)
    return transformers.GPT2Model(cfg)


def _llama(impl: str) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                   max_position_embeddings=64, attn_implementation=impl)
    return transformers.LlamaModel(cfg)


def _bert(impl: str) -> torch.nn.Module:
    cfg = transformers.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                  num_attention_heads=4, vocab_size=100, max_position_embeddings=64,
                                  attn_implementation=impl)
    return transformers.BertModel(cfg)


# model -> (factory, module path of layer 0, expected spec fields, eager mask kind, sdpa mask kind)
MODELS = {
    "gpt2": (_gpt2, "h.0.attn", {"q_heads": 4, "kv_heads": 4, "causal": True}, MaskKind.NONE, MaskKind.NONE),
    "llama": (_llama, "layers.0.self_attn", {"q_heads": 4, "kv_heads": 2, "causal": True}, MaskKind.NONE,
              MaskKind.NONE),
    "bert": (_bert, "encoder.layer.0.attention.self", {"q_heads": 4, "kv_heads": 4, "causal": False},
             MaskKind.PADDING, MaskKind.PADDING),
}


def _inputs(name: str, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (B, N), generator=g)
    if name != "bert":
        return (ids,), {}
    padding = torch.ones(B, N, dtype=torch.long)
    padding[1, 11:] = 0
    return (ids,), {"attention_mask": padding}


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(MODELS))
def test_hf_model(name: str, impl: str) -> None:
    factory, path0, expect, eager_kind, sdpa_kind = MODELS[name]
    torch.manual_seed(0)
    model = factory(impl).eval()
    args, kwargs = _inputs(name)
    compiled, seen = compile_with(model, dynamic=(name == "llama"))
    with torch.no_grad():
        out = compiled(*args, **kwargs).last_hidden_state
        ref = model(*args, **kwargs).last_hidden_state
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert len(seen.matches) == LAYERS and not seen.skipped, seen.sites
    assert [m.module_path for m in seen.matches][0] == path0
    want = {"batch": B, "q_len": N, "kv_len": N, "head_dim": 8, "dtype": "float32", "scale": None,
            "mask": eager_kind if impl == "eager" else sdpa_kind, **expect}
    for match in seen.matches:
        assert {key: getattr(match.spec, key) for key in want} == want
        assert match.pattern.startswith("sdpa" if impl == "sdpa" else "matmul_softmax")
    if name == "llama":
        assert {"q_len", "kv_len"} <= set(seen.matches[0].spec.dynamic)


def test_llama_train_gradients() -> None:
    torch.manual_seed(0)
    model = _llama("eager").train()
    args, _ = _inputs("llama")
    compiled, seen = compile_with(model)
    out = compiled(*args).last_hidden_state
    grads = torch.autograd.grad(out.square().mean(), list(model.parameters()))
    ref = model(*args).last_hidden_state
    ref_grads = torch.autograd.grad(ref.square().mean(), list(model.parameters()))
    assert all(m.spec.needs_grad and m.spec.kv_heads == 2 for m in seen.matches)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
