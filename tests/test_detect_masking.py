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


# (model, attn_implementation, batch) -> window of each layer (None: causal only). Packed sequences (position ids
# restarting, no cache): the causal test runs on positions remapped from the user's position ids, which cannot be
# checked at compile time, so the and-ed keep-mask stays a bool tensor (exact; the kernels have no document-id mask).
CASES = {
    ("llama", "eager", "padded"): (None, None),
    ("llama", "sdpa", "padded"): (None, None),
    ("mistral", "sdpa", "padded"): (WINDOW, WINDOW),
    ("mistral", "eager", "plain"): (WINDOW, WINDOW),
    ("qwen2", "eager", "padded"): (WINDOW, None),
    ("llama", "sdpa", "packed"): (None, None),
}
KINDS = {"padded": (MaskKind.PADDING, True), "plain": (MaskKind.NONE, True), "packed": (MaskKind.BOOL, False)}
FACTORIES = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2}


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: "-".join(map(str, c)))
def test_masking_utils_become_flags_and_padding(case: tuple[str, str, str]) -> None:
    name, impl, batch = case
    padded = batch == "padded"
    torch.manual_seed(0)
    model = FACTORIES[name](impl).eval()
    ids = torch.randint(0, 100, (B, N), generator=torch.Generator().manual_seed(5))
    kwargs: dict[str, object] = {}
    if batch == "packed":  # two documents of 9 and 8 tokens per row
        kwargs = {"position_ids": torch.cat([torch.arange(9), torch.arange(8)]).repeat(B, 1), "use_cache": False}
    if padded:
        pad = torch.ones(B, N, dtype=torch.long)
        pad[1, 11:] = 0
        kwargs["attention_mask"] = pad
    compiled, seen = compile_with(model, rewrite=avo_rewrite)
    with torch.no_grad():
        out = compiled(ids, **kwargs).last_hidden_state
        ref = model(ids, **kwargs).last_hidden_state
    assert len(seen.matches) == 2 and not seen.skipped, seen.sites
    kind, causal = KINDS[batch]
    for match, window in zip(seen.matches, CASES[case], strict=True):
        want = {"q_heads": 4, "kv_heads": 2, "q_len": N, "kv_len": N, "scale": None, "causal": causal,
                "window": window, "mask": kind}
        assert {key: getattr(match.spec, key) for key in want} == want
    real = pad.bool() if padded else torch.ones(B, N, dtype=torch.bool)
    torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=1e-4)
