"""The real ``transformers`` models of benchmarks/hf_models.py: configs per profile, builders, inputs, and one
``factory()`` per case for ``python -m avo_inductor.search run --model benchmarks.hf_cases:<factory>``.

Models are built from configs with random weights (no downloads). Widths follow the released models (Llama-3 8B,
Mistral-7B, Qwen2-7B, GPT-2 small, BERT-large, ViT-L/16 at 384, BLOOM-7B1, T5-v1.1-large) with 2-4 layers, so a
cold Inductor compile stays seconds; ``tiny`` is a 1-layer head-dim-16 version for the CPU Triton interpreter.
Dropout is off everywhere (as LLM pretraining runs today): avo does not fuse dropout, and a training site with
dropout would only measure the fallback.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

PROFILES = ("full", "quick", "tiny")
# The search subprocess rebuilds a case from these (a search factory takes no arguments).
ENV_PROFILE, ENV_SHAPE, ENV_TRAIN = "HF_BENCH_PROFILE", "HF_BENCH_SHAPE", "HF_BENCH_TRAIN"


@dataclass(frozen=True)
class HFCase:
    """One benchmarked model.

    attn: the ``attn_implementation`` of the measured model. masked: its attention carries a mask or bias (window,
    padding, ALiBi, relative bias), so it is also judged against its ``attn_implementation="sdpa"`` twin.
    twin: such a twin exists (BLOOM has none in transformers 5). trains: a training step is measured too.
    inputs: what the model eats: ``ids`` (B, N) | ``ids+mask`` (2, B, N: ids and a right-padding mask) | ``pixels``.
    """

    name: str
    family: str
    attn: str
    masked: bool
    twin: bool
    trains: bool
    inputs: str

    @property
    def factory(self) -> str:
        """The module-level search factory's name in this module."""
        return self.name.replace("-", "_")


CASES: dict[str, HFCase] = {c.name: c for c in (
    HFCase("llama-eager", "llama", "eager", masked=False, twin=False, trains=True, inputs="ids"),
    HFCase("llama-sdpa", "llama", "sdpa", masked=False, twin=False, trains=True, inputs="ids"),
    HFCase("mistral-window", "mistral", "eager", masked=True, twin=True, trains=False, inputs="ids"),
    HFCase("qwen2", "qwen2", "eager", masked=False, twin=False, trains=False, inputs="ids"),
    HFCase("gpt2", "gpt2", "eager", masked=False, twin=False, trains=True, inputs="ids"),
    HFCase("bert-padded", "bert", "eager", masked=True, twin=True, trains=False, inputs="ids+mask"),
    HFCase("vit", "vit", "eager", masked=False, twin=False, trains=False, inputs="pixels"),
    HFCase("bloom-alibi", "bloom", "eager", masked=True, twin=False, trains=False, inputs="ids"),
    HFCase("t5-encoder", "t5", "eager", masked=True, twin=True, trains=False, inputs="ids"),
)}

# (batch, seq) per profile; ViT's seq is its token count, fixed by image and patch size.
SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "full": {"llama-eager": (4, 2048), "llama-sdpa": (4, 2048), "mistral-window": (2, 4096), "qwen2": (4, 2048),
             "gpt2": (8, 1024), "bert-padded": (16, 512), "vit": (32, 577), "bloom-alibi": (4, 2048),
             "t5-encoder": (8, 1024)},
    "quick": {"llama-eager": (2, 2048), "llama-sdpa": (2, 2048), "mistral-window": (1, 4096), "qwen2": (2, 1024),
              "gpt2": (4, 1024), "bert-padded": (8, 512), "vit": (16, 577), "bloom-alibi": (2, 1024),
              "t5-encoder": (4, 512)},
    "tiny": {name: (2, 17) for name in CASES} | {"mistral-window": (2, 24), "vit": (2, 17)},
}
# The full profile: every case at its SHAPES entry, and the window model at 8k context too, where attention decides
# the step (at 2 x 4096 the rest of the model alone is more than half of inductor's step: README "Measured").
LONG_CONTEXT_RUNS = ("mistral-window:1:8192",)
DEFAULT_CASES = (*CASES, *LONG_CONTEXT_RUNS)
QUICK_CASES = ("llama-eager", "mistral-window", "gpt2", "bert-padded", "bloom-alibi")
TINY_CASES = ("llama-eager", "gpt2")
VOCAB = 32000  # the embedding table's size does not touch attention; BLOOM's 250k rows would be 2 GB of waste
WINDOW = {"full": 1024, "quick": 1024, "tiny": 8}


def _decoder_dims(profile: str, hidden: int, inter: int, heads: int, kv: int) -> dict[str, Any]:
    if profile == "tiny":
        return dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                    num_hidden_layers=1, vocab_size=128)
    return dict(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv,
                num_hidden_layers=2, vocab_size=VOCAB)


def config_for(family: str, profile: str, seq: int) -> Any:
    """The family's transformers config at this profile's widths (positions sized to ``seq``)."""
    import transformers as tf

    tiny = profile == "tiny"
    positions = max(seq, 64)
    if family in ("llama", "mistral", "qwen2"):
        widths = {"llama": (4096, 14336, 32, 8), "mistral": (4096, 14336, 32, 8), "qwen2": (3584, 18944, 28, 4)}
        extra = {"sliding_window": WINDOW[profile]} if family == "mistral" else {}
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
        return cls(**_decoder_dims(profile, *widths[family]), **extra, max_position_embeddings=positions,
                   attention_dropout=0.0, use_cache=False)
    if family not in _OTHER_DIMS:
        raise ValueError(f"unknown model family {family!r}")
    dims: dict[str, Any] = _OTHER_DIMS[family][0 if tiny else 1]
    if family == "gpt2":
        return tf.GPT2Config(**dims, n_positions=max(positions, 1024), attn_pdrop=0.0, resid_pdrop=0.0,
                             embd_pdrop=0.0, use_cache=False)
    if family == "bert":
        return tf.BertConfig(**dims, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             vocab_size=128 if tiny else 30522, max_position_embeddings=positions)
    if family == "vit":  # 384/16 = 24 patches a side: 577 tokens with CLS; tiny: 64/16 = 4 a side, 17 tokens
        return tf.ViTConfig(**dims, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            image_size=64 if tiny else 384, patch_size=16)
    if family == "bloom":
        return tf.BloomConfig(**dims, attention_dropout=0.0, hidden_dropout=0.0, use_cache=False)
    return tf.T5Config(**dims, feed_forward_proj="gated-gelu", dropout_rate=0.0, use_cache=False)


_ENCODER = (dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=1),
            dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=4))
# family -> (tiny dims, full/quick dims) for the families without GQA
_OTHER_DIMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "gpt2": (dict(n_embd=64, n_head=4, n_layer=1, vocab_size=128, bos_token_id=0, eos_token_id=0),
             dict(n_embd=768, n_head=12, n_layer=4)),
    "bert": _ENCODER, "vit": _ENCODER,
    "bloom": (dict(hidden_size=64, n_head=4, n_layer=1, vocab_size=128),
              dict(hidden_size=4096, n_head=32, n_layer=2, vocab_size=VOCAB)),
    "t5": (dict(d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4, vocab_size=128),
           dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=4, num_heads=16, vocab_size=32128)),
}


def _model_class(family: str) -> Any:
    import transformers as tf

    return {"llama": tf.LlamaModel, "mistral": tf.MistralModel, "qwen2": tf.Qwen2Model, "gpt2": tf.GPT2Model,
            "bert": tf.BertModel, "vit": tf.ViTModel, "bloom": tf.BloomModel, "t5": tf.T5EncoderModel}[family]


class LastHidden(torch.nn.Module):
    """One tensor in, ``last_hidden_state`` (B, N, hidden) out: the benchmark's step and loss, and the search's
    tracing, call every model the same way. ``ids+mask`` input is (2, B, N): token ids and the padding mask
    (1 = token, 0 = pad), both runtime inputs of the compiled graph."""

    def __init__(self, model: torch.nn.Module, inputs: str) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inputs == "pixels":
            return self.model(pixel_values=x).last_hidden_state
        if self.inputs == "ids+mask":
            return self.model(input_ids=x[0], attention_mask=x[1]).last_hidden_state
        return self.model(input_ids=x).last_hidden_state


def build_model(case: HFCase, attn: str, profile: str, seq: int, device: str, dtype: torch.dtype) -> LastHidden:
    """The case's model with ``attn_implementation=attn``; seeded, so the eager and SDPA twins share weights.
    Initialised on the device: a CPU init of a 4096-wide layer costs seconds."""
    cfg = config_for(case.family, profile, seq)
    torch.manual_seed(0)
    with torch.device(device):
        model = _model_class(case.family)._from_config(cfg, attn_implementation=attn)
    return LastHidden(model.to(dtype=dtype), case.inputs)


def make_input(case: HFCase, profile: str, batch: int, seq: int, device: str, dtype: torch.dtype,
               seed: int = 1) -> torch.Tensor:
    """Random input of the case's kind. Padded batches: row 0 full, the others ragged lengths in [N/2, N)."""
    g = torch.Generator().manual_seed(seed)
    if case.inputs == "pixels":
        side = 64 if profile == "tiny" else 384
        return torch.randn(batch, 3, side, side, generator=g).to(device, dtype)
    vocab = config_for(case.family, profile, seq).vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    if case.inputs == "ids":
        return ids.to(device)
    lengths = torch.randint(seq // 2, seq, (batch,), generator=g)
    lengths[0] = seq
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return torch.stack([ids, mask]).to(device)


def device_and_dtype() -> tuple[str, torch.dtype]:
    """bf16 on one GPU; float32 on CPU (the interpreter)."""
    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def search_env(profile: str, batch: int, seq: int, train: bool) -> dict[str, str]:
    """What a search subprocess needs to rebuild the benchmark's exact case."""
    return {ENV_PROFILE: profile, ENV_SHAPE: f"{batch}:{seq}", ENV_TRAIN: "1" if train else "0"}


def search_factory(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """(model, example_inputs) for the search's ``--model``: the case at the shape in the environment (default:
    the full profile's). Training cases trace with parameters requiring grad, so the search tunes training records
    (they serve inference sites too); inference cases trace without, so it tunes forward records."""
    case = CASES[name]
    profile = os.environ.get(ENV_PROFILE, "full")
    if profile not in PROFILES:
        raise ValueError(f"{ENV_PROFILE}={profile!r}: use one of {PROFILES}")
    batch, seq = SHAPES[profile][name]
    if os.environ.get(ENV_SHAPE):
        b_text, _, n_text = os.environ[ENV_SHAPE].partition(":")
        batch, seq = int(b_text), int(n_text)
    train = os.environ.get(ENV_TRAIN, "1" if case.trains else "0") == "1"
    model, x = model_and_input(name, profile, batch, seq, train=train)
    return model, (x,)


def model_and_input(name: str, profile: str = "full", batch: int | None = None, seq: int | None = None, *,
                    train: bool = False) -> tuple[torch.nn.Module, torch.Tensor]:
    """The case's model (its own attention implementation, in train mode with grads only for ``train``) and an input,
    on this machine's device and dtype, at the profile's shape unless ``batch``/``seq`` say otherwise."""
    case = CASES[name]
    default_batch, default_seq = SHAPES[profile][name]
    batch, seq = batch or default_batch, seq or default_seq
    device, dtype = device_and_dtype()
    model = build_model(case, case.attn, profile, seq, device, dtype).train(train)
    model.requires_grad_(train)
    return model, make_input(case, profile, batch, seq, device, dtype)


def _factory(name: str) -> Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    def factory() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        return search_factory(name)

    factory.__name__ = factory.__qualname__ = CASES[name].factory
    factory.__doc__ = f"Search factory for {name} (shape from {ENV_PROFILE}/{ENV_SHAPE}/{ENV_TRAIN})."
    return factory


llama_eager = _factory("llama-eager")
llama_sdpa = _factory("llama-sdpa")
mistral_window = _factory("mistral-window")
qwen2 = _factory("qwen2")
gpt2 = _factory("gpt2")
bert_padded = _factory("bert-padded")
vit = _factory("vit")
bloom_alibi = _factory("bloom-alibi")
t5_encoder = _factory("t5-encoder")
