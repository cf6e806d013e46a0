"""transformers v5 masking utilities (create_causal_mask / sliding window, and-ed with the padding of a batch) are
read as the cheapest exact kind: causal or causal/window flags plus a (B, Nk) padding keep-mask, for eager (additive
0 / finfo.min mask) and sdpa (bool mask) attention alike; the avo op (baseline kernel, interpreter) matches eager.

A pad token's own query row can see no key (left padding; or right padding under a window, as here): eager's
finfo.min mask gives it a uniform average, and the rewritten site adds that after the kernel (``empty_rows.py``), so
eager outputs are compared at every position; sdpa's bool mask gives it 0 (SDPA's rule), compared at real tokens."""
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
    ("llama", "eager", "left"): (None, None),  # batched generation's padding: pad rows see no key
    ("llama", "sdpa", "left"): (None, None),
    ("llama", "sdpa", "padded"): (None, None),
    ("mistral", "sdpa", "padded"): (WINDOW, WINDOW),
    ("mistral", "eager", "plain"): (WINDOW, WINDOW),
    ("qwen2", "eager", "padded"): (WINDOW, None),
    ("llama", "sdpa", "packed"): (None, None),
}
KINDS = {"padded": (MaskKind.PADDING, True), "left": (MaskKind.PADDING, True), "plain": (MaskKind.NONE, True),
         "packed": (MaskKind.BOOL, False)}
FACTORIES = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2}


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: "-".join(map(str, c)))
def test_masking_utils_become_flags_and_padding(case: tuple[str, str, str]) -> None:
    name, impl, batch = case
    padded = batch in ("padded", "left")
    torch.manual_seed(0)
    model = FACTORIES[name](impl).eval()
    ids = torch.randint(0, 100, (B, N), generator=torch.Generator().manual_seed(5))
    kwargs: dict[str, object] = {}
    if batch == "packed":  # two documents of 9 and 8 tokens per row
        kwargs = {"position_ids": torch.cat([torch.arange(9), torch.arange(8)]).repeat(B, 1), "use_cache": False}
    if padded:
        pad = torch.ones(B, N, dtype=torch.long)
        pad[1, 11:] = 0
        if batch == "left":
            pad[1] = pad[1].flip(0)
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
    # eager masks fill with finfo.min: a pad token's row that sees no key is eager's mean of v there too
    real = pad.bool() if padded and impl == "sdpa" else torch.ones(B, N, dtype=torch.bool)
    assert all(m.empty_rows_mean == (impl == "eager" and padded) for m in seen.matches)
    torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=1e-4)


class _WhereMask(torch.nn.Module):
    """Hand-written attention under an eager-style additive mask ``where(keep, zero, fill)``, keep = (a shape-only
    factor) & (the batch's padding): the operand forms transformers and user code write (and Dynamo may trace them
    as a call or a lifted constant, as it does on a GPU)."""

    def __init__(self, zero: str, fill: str) -> None:
        super().__init__()
        self.zero, self.fill = zero, fill
        self.register_buffer("zero_const", torch.zeros(()), persistent=False)

    def _operand(self, form: str, value: float, like: torch.Tensor) -> object:
        if form == "number":
            return value
        if form == "zeros":
            return torch.zeros((), device=like.device, dtype=like.dtype) + value
        if form == "tensor":
            return torch.tensor(value, device=like.device, dtype=like.dtype)
        if form == "full":
            return torch.full((), value, device=like.device, dtype=like.dtype)
        if form == "buffer":
            return self.zero_const + value
        assert form == "data"  # depends on the input: never a constant, however it evaluates
        return like.sum() * 0 + value

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        keep = (torch.arange(n, device=q.device)[None, None, None, :] >= 0) & pad[:, None, None, :].bool()
        keep = keep.expand(q.shape[0], 1, n, n)
        fill_value = {"min": torch.finfo(q.dtype).min, "-inf": float("-inf"), "mild": -1.0}
        zero_form, _, zero_value = self.zero.partition("=")
        fill_form, _, fill_name = self.fill.partition("=")
        bias = torch.where(keep, self._operand(zero_form, float(zero_value or 0), q),
                           self._operand(fill_form, fill_value[fill_name], q))
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
        return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize(("zero", "fill", "kind"), [
    ("number", "number=min", MaskKind.PADDING),
    ("zeros", "number=min", MaskKind.PADDING),
    ("tensor", "tensor=min", MaskKind.PADDING),
    ("full", "full=-inf", MaskKind.PADDING),
    ("buffer", "number=-inf", MaskKind.PADDING),
    ("number=0.5", "number=min", MaskKind.BIAS),  # not 0 where kept: a real bias
    ("tensor", "tensor=mild", MaskKind.BIAS),  # -1 where dropped is a bias, not a mask
    ("data", "number=min", MaskKind.BIAS),  # computed from the input: not evaluated, stays as written
], ids=lambda x: str(x))
def test_eager_mask_operands_are_read_by_value(zero: str, fill: str, kind: MaskKind) -> None:
    """where(keep, 0, finfo.min | -inf) is a keep-mask whatever form its 0 and fill take; BERT's padding on an H100
    was read as a bias (its graph's operands were not the literal forms the reader knew); anything that is not 0 /
    a mask value by evaluation stays a bias."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, 4, N, 16, generator=g) for _ in range(3))
    pad = torch.ones(B, N, dtype=torch.long)
    pad[1, 11:] = 0
    model = _WhereMask(zero, fill)
    compiled, seen = compile_with(model, rewrite=avo_rewrite)
    with torch.no_grad():
        out, ref = compiled(q, k, v, pad), model(q, k, v, pad)
    (match,) = seen.matches
    assert (match.spec.mask, match.spec.causal) == (kind, False)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
