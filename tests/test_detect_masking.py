"""transformers v5 masking utilities (create_causal_mask / sliding window, and-ed with the padding of a batch) are
read as the cheapest exact kind: causal or causal/window flags plus a (B, Nk) padding keep-mask, for eager (additive
0 / finfo.min mask) and sdpa (bool mask) attention alike; the avo op (baseline kernel, interpreter) matches eager.

A pad token's own query row can see no key (left padding; or right padding under a window, as here): eager gives it
a uniform average, the kernels 0 (reference.py's rule), so the outputs are compared at the real tokens, which never
read a pad token's row (it is masked as a key in every later layer)."""
from __future__ import annotations

import pytest
import torch

from avo_inductor.spec import MaskKind
from detect_zoo import avo_rewrite, compile_with

transformers = pytest.importorskip("transformers")
B, N, WINDOW = 2, 17, 5
COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=100, max_position_embeddings=64)


def _llama(impl: str) -> torch.nn.Module:
    return transformers.LlamaModel(transformers.LlamaConfig(attn_implementation=impl, **COMMON))


def _mistral(impl: str) -> torch.nn.Module:
    return transformers.MistralModel(transformers.MistralConfig(sliding_window=WINDOW, attn_implementation=impl,
                                                                **COMMON))


def _qwen2(impl: str) -> torch.nn.Module:
    cfg = transformers.Qwen2Config(sliding_window=WINDOW, use_sliding_window=True, attn_implementation=impl,
                                   layer_types=["sliding_attention", "full_attention"], **COMMON)
    return transformers.Qwen2Model(cfg)


# (model, attn_implementation, padded) -> window of each layer (None: causal only)
CASES = {
    ("llama", "eager", True): (None, None),
    ("llama", "sdpa", True): (None, None),
    ("mistral", "sdpa", True): (WINDOW, WINDOW),
    ("mistral", "eager", False): (WINDOW, WINDOW),
    ("qwen2", "eager", True): (WINDOW, None),
}
FACTORIES = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2}


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: "-".join(map(str, c)))
def test_masking_utils_become_flags_and_padding(case: tuple[str, str, bool]) -> None:
    name, impl, padded = case
    torch.manual_seed(0)
    model = FACTORIES[name](impl).eval()
    ids = torch.randint(0, 100, (B, N), generator=torch.Generator().manual_seed(5))
    kwargs: dict[str, torch.Tensor] = {}
    if padded:
        kwargs["attention_mask"] = torch.ones(B, N, dtype=torch.long)
        kwargs["attention_mask"][1, 11:] = 0
    compiled, seen = compile_with(model, rewrite=avo_rewrite)
    with torch.no_grad():
        out = compiled(ids, **kwargs).last_hidden_state
        ref = model(ids, **kwargs).last_hidden_state
    assert len(seen.matches) == 2 and not seen.skipped, seen.sites
    windows = CASES[case]
    for match, window in zip(seen.matches, windows, strict=True):
        want = {"q_heads": 4, "kv_heads": 2, "q_len": N, "kv_len": N, "scale": None, "causal": True,
                "window": window, "mask": MaskKind.PADDING if padded else MaskKind.NONE}
        assert {key: getattr(match.spec, key) for key in want} == want
    real = kwargs["attention_mask"].bool() if padded else torch.ones(B, N, dtype=torch.bool)
    torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=1e-4)
