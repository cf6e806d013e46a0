"""attn_implementation="avo" without torch.compile: tiny random-init transformers models (no downloads) match eager,
a store hit runs the avo kernel, a miss runs SDPA and queues the spec, AVO_ON_MISS=error raises; and the runtime mask
split (causal / window / key padding / bool / bias) is exact for the masks transformers builds."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import avo_inductor
from avo_inductor.backend.graph_pass import AvoMissError, shared_store
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.settings import get_settings, reset_settings
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind

transformers = pytest.importorskip("transformers")
avo_tf = pytest.importorskip("avo_inductor.integrations.transformers")
from avo_inductor.integrations.masks import MaskPlan, plan_mask  # noqa: E402
from transformers.masking_utils import (  # noqa: E402
    causal_mask_function, sdpa_mask, sliding_window_causal_mask_function,
)

B, N, VOCAB = 2, 17, 100
CPU = HardwareKey.current("cpu")


def _llama(impl: str) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
                                   attn_implementation=impl)
    return transformers.LlamaModel(cfg)


def _bert(impl: str) -> torch.nn.Module:
    cfg = transformers.BertConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  vocab_size=VOCAB, max_position_embeddings=64, attn_implementation=impl)
    return transformers.BertModel(cfg)


# model -> (factory, the spec its padded batch gives the avo kernel: causal GQA + key padding / bidirectional padding)
MODELS: dict[str, tuple[Callable[[str], torch.nn.Module], AttentionSpec]] = {
    "llama_gqa_causal": (_llama, AttentionSpec(B, 4, 2, N, N, 16, dtype="float32", causal=True, mask="padding")),
    "bert_padded": (_bert, AttentionSpec(B, 4, 4, N, N, 16, dtype="float32", mask="padding")),
}


@pytest.fixture(autouse=True)
def fresh_decisions() -> Any:
    avo_tf.reset()
    yield
    avo_tf.reset()


class OpNames(TorchDispatchMode):
    """Records the name of every op that reaches dispatch (which attention ran, not a stand-in for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _batch(seed: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (B, N), generator=seed)
    padding = torch.ones(B, N, dtype=torch.long)
    padding[1, 11:] = 0  # right padding: no query row is fully masked, so every valid position must agree
    return ids, padding


def _run(name: str, impl: str, ids: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    torch.manual_seed(0)  # the same weights for every implementation
    model = MODELS[name][0](impl).eval()
    with torch.no_grad(), OpNames() as ops:
        out = model(ids, attention_mask=padding).last_hidden_state
    return out, ops.names


def _avo_calls(names: list[str]) -> int:
    return sum(n == "avo.attention_fwd" for n in names)


def _sdpa_calls(names: list[str]) -> int:
    return sum("scaled_dot_product" in n for n in names)


@pytest.mark.parametrize("stored", [False, True], ids=["miss", "hit"])
@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_eager(name: str, stored: bool, seeded: torch.Generator,
                             caplog: pytest.LogCaptureFixture) -> None:
    spec = MODELS[name][1]
    store = shared_store(get_settings())
    if stored:
        store.put(baseline_record(spec, CPU))
    ids, padding = _batch(seeded)
    ref, _ = _run(name, "eager", ids, padding)
    avo_inductor.configure(log=True)
    with caplog.at_level(logging.INFO, logger="avo_inductor"):
        out, names = _run(name, "avo", ids, padding)
    valid = padding.bool()
    assert torch.isfinite(out[valid]).all()
    torch.testing.assert_close(out[valid], ref[valid], atol=2e-5, rtol=2e-5)
    (site,) = avo_tf.decisions()
    assert site.spec == spec and site.pattern == "transformers"
    lines = [r.getMessage() for r in caplog.records if "avo site:" in r.getMessage()]
    assert len(lines) == 1 and f"/{site.status}" in lines[0]
    pending = {entry.spec for entry in store.pending()}
    if stored:
        assert (site.status, site.action, site.layer) == ("hit", "avo", "local")
        assert _avo_calls(names) == 1 and _sdpa_calls(names) == 0
        assert pending == set()
    else:
        assert (site.status, site.action) == ("miss", "kept") and "queued" in site.reason
        assert _avo_calls(names) == 0 and _sdpa_calls(names) == 1
        assert pending == {spec}


def test_decision_is_cached_per_bucket(seeded: torch.Generator) -> None:
    """A second batch, and a length in the same bucket, reuse the decision: one store lookup, one queue entry."""
    ids, padding = _batch(seeded)
    _run("llama_gqa_causal", "avo", ids, padding)
    _run("llama_gqa_causal", "avo", ids.flip(0), padding.flip(0))
    longer = torch.randint(0, VOCAB, (B, 20), generator=seeded)
    longer_padding = torch.ones_like(longer)
    longer_padding[0, 14:] = 0
    _run("llama_gqa_causal", "avo", longer, longer_padding)  # lengths 17 and 20 share the bucket 32
    (entry,) = shared_store(get_settings()).pending()
    assert entry.count == 1 and entry.spec == MODELS["llama_gqa_causal"][1]
    assert len(avo_tf.decisions()) == 1


def test_on_miss_error_raises(seeded: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVO_ON_MISS", "error")
    reset_settings()
    ids, padding = _batch(seeded)
    for _ in range(2):  # every call of a missing bucket raises, not only the first
        with pytest.raises(AvoMissError, match="no tuned kernel"):
            _run("bert_padded", "avo", ids, padding)


def test_cpu_without_interpreter_runs_sdpa(seeded: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ids, padding = _batch(seeded)
    _, names = _run("bert_padded", "avo", ids, padding)
    assert _sdpa_calls(names) == 1 and _avo_calls(names) == 0
    (site,) = avo_tf.decisions()
    assert site.spec is None and "TRITON_INTERPRET" in site.reason
    assert shared_store(get_settings()).pending() == []


def test_register_is_idempotent() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    avo_tf.register()
    avo_tf.register()
    assert ALL_ATTENTION_FUNCTIONS["avo"] is avo_tf.avo_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["avo"] is sdpa_mask


# ---- the runtime mask split, on masks built by transformers' own sdpa_mask ------------------------------------------

def _hf_mask(q_len: int, kv_len: int, fn: Callable[..., Any], lengths: list[int] | None,
             left: bool = False) -> torch.Tensor | None:
    padding = None
    if lengths is not None:
        padding = torch.zeros(len(lengths), kv_len, dtype=torch.bool)
        for b, n in enumerate(lengths):
            padding[b, slice(kv_len - n, None) if left else slice(None, n)] = True
    return sdpa_mask(batch_size=B, q_length=q_len, kv_length=kv_len, q_offset=kv_len - q_len, mask_function=fn,
                     attention_mask=padding, allow_is_causal_skip=False)


def _keep_of_plan(plan: MaskPlan, q_len: int, kv_len: int) -> torch.Tensor:
    """The (B, Nq, Nk) keep-mask a plan stands for: the flags' band, the padding, or the bool mask itself."""
    i = torch.arange(q_len).unsqueeze(1) + (kv_len - q_len)
    j = torch.arange(kv_len).unsqueeze(0)
    keep = torch.ones(q_len, kv_len, dtype=torch.bool)
    if plan.causal:
        keep = keep & (j <= i)
    if plan.window:
        keep = keep & (j > i - plan.window)
    keep = keep.expand(B, q_len, kv_len)
    if plan.kind is MaskKind.PADDING:
        assert plan.tensor is not None and plan.tensor.shape == (B, kv_len) and plan.tensor.dtype == torch.bool
        keep = keep & plan.tensor[:, None, :]
    elif plan.kind is MaskKind.BOOL:
        assert plan.tensor is not None
        keep = keep & plan.tensor.expand(B, 1, q_len, kv_len)[:, 0]
    return keep


BIDIRECTIONAL = lambda b, h, q, k: torch.ones((), dtype=torch.bool)  # noqa: E731


@pytest.mark.parametrize(("q_len", "kv_len", "fn", "lengths", "left", "expect"), [
    (17, 17, causal_mask_function, None, False, (True, None, MaskKind.NONE)),
    (17, 17, causal_mask_function, [17, 11], False, (True, None, MaskKind.PADDING)),
    (17, 33, causal_mask_function, [33, 20], True, (True, None, MaskKind.PADDING)),
    (17, 17, sliding_window_causal_mask_function(5), None, False, (True, 5, MaskKind.NONE)),
    (17, 17, sliding_window_causal_mask_function(5), [17, 9], False, (True, 5, MaskKind.PADDING)),
    (17, 17, BIDIRECTIONAL, [17, 11], False, (False, None, MaskKind.PADDING)),
    (1, 33, causal_mask_function, [33, 20], True, (False, None, MaskKind.PADDING)),
], ids=["causal", "causal-right-pad", "causal-left-pad-prefix", "window", "window-pad", "bidir-pad", "decode-pad"])
def test_mask_split_is_exact(q_len: int, kv_len: int, fn: Any, lengths: list[int] | None, left: bool,
                             expect: tuple[bool, int | None, MaskKind]) -> None:
    mask = _hf_mask(q_len, kv_len, fn, lengths, left)
    assert mask is not None and mask.dtype == torch.bool
    plan = plan_mask(mask, is_causal=False, batch=B, q_len=q_len, kv_len=kv_len)
    assert (plan.causal, plan.window, plan.kind, plan.reason) == (*expect, "")
    assert torch.equal(_keep_of_plan(plan, q_len, kv_len), mask.expand(B, 1, q_len, kv_len)[:, 0])


def test_masks_that_do_not_split(seeded: torch.Generator) -> None:
    """A random keep-mask stays BOOL; an additive 0/-inf mask is a keep-mask; a real bias stays BIAS; SDPA's
    top-left causal with Nq != Nk is refused (the avo flag is bottom-right)."""
    keep = torch.rand(B, 1, 17, 33, generator=seeded) > 0.3
    assert plan_mask(keep, is_causal=False, batch=B, q_len=17, kv_len=33).kind is MaskKind.BOOL
    causal = _hf_mask(17, 17, causal_mask_function, [17, 11])
    assert causal is not None
    additive = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert plan_mask(additive, is_causal=False, batch=B, q_len=17, kv_len=17).kind is MaskKind.PADDING
    bias = torch.randn(B, 1, 17, 17, generator=seeded)
    plan = plan_mask(bias, is_causal=False, batch=B, q_len=17, kv_len=17)
    assert plan.kind is MaskKind.BIAS and plan.tensor is bias
    assert "top-left" in plan_mask(None, is_causal=True, batch=B, q_len=5, kv_len=9).reason


@pytest.mark.parametrize(("fill", "left", "kind", "mean"), [
    (torch.finfo(torch.float32).min, True, MaskKind.PADDING, True),  # transformers' eager masks
    (torch.finfo(torch.float32).min, False, MaskKind.PADDING, False),  # right padding: every row sees a key
    (float("-inf"), True, MaskKind.PADDING, False),
    (-1e4, True, MaskKind.BIAS, False),  # a mild fill: eager's fully masked row is a softmax of the scores, a bias
    ("mixed", True, MaskKind.BIAS, False),  # -inf and finfo.min in one mask: the bias path takes both
    ("differing", True, MaskKind.BIAS, False),  # finfo.min and -1e35: eager averages over the -1e35 keys alone
    (-1e4, False, MaskKind.PADDING, False),  # a mild fill, but no row without keys: flags and padding are exact
], ids=["finfo-min", "finfo-min-right-pad", "-inf", "mild", "mixed", "differing", "mild-right-pad"])
def test_additive_mask_fill_decides_rows_without_keys(fill: float | str, left: bool, kind: MaskKind,
                                                      mean: bool) -> None:
    """Left padding under a causal mask leaves pad rows with no key: an additive mask says what eager gives them
    (and a mask with no such row adds nothing after the kernel)."""
    keep = _hf_mask(17, 17, causal_mask_function, [17, 11], left=left)
    assert keep is not None
    if fill in ("mixed", "differing"):
        additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf") if fill == "mixed" else -1e35)
        additive[..., 0] = torch.where(keep[..., 0], 0.0, torch.finfo(torch.float32).min)
    else:
        additive = torch.zeros(keep.shape).masked_fill(~keep, float(fill))
    plan = plan_mask(additive, is_causal=False, batch=B, q_len=17, kv_len=17)
    assert (plan.kind, plan.empty_rows_mean) == (kind, mean)


def test_a_half_mask_on_float_scores_does_not_swamp_them() -> None:
    """fp16's finfo.min added to float32 scores leaves eager's row without keys a softmax of the scores: a bias."""
    keep = _hf_mask(17, 17, causal_mask_function, [17, 11], left=True)
    assert keep is not None
    additive = torch.zeros(keep.shape, dtype=torch.float16).masked_fill(~keep, torch.finfo(torch.float16).min)
    on_half = plan_mask(additive, is_causal=False, batch=B, q_len=17, kv_len=17, score_dtype=torch.float16)
    on_float = plan_mask(additive, is_causal=False, batch=B, q_len=17, kv_len=17, score_dtype=torch.float32)
    assert (on_half.kind, on_half.empty_rows_mean) == (MaskKind.PADDING, True)
    assert (on_float.kind, on_float.empty_rows_mean) == (MaskKind.BIAS, False)


def test_finfo_min_mask_rows_without_keys_are_eager_mean(seeded: torch.Generator) -> None:
    """An additive finfo.min mask with left padding, on a stored kernel: every position, pad rows included, is
    eager's (those rows: the mean of v, where the kernel alone gives 0)."""
    spec = AttentionSpec(B, 4, 2, N, N, 16, dtype="float32", causal=True, mask="padding")
    shared_store(get_settings()).put(baseline_record(spec, CPU))
    keep = _hf_mask(N, N, causal_mask_function, [N, 11], left=True)
    assert keep is not None
    additive = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    q = torch.randn(B, 4, N, 16, generator=seeded)
    k, v = (torch.randn(B, 2, N, 16, generator=seeded) for _ in range(2))
    out, _ = avo_tf.avo_attention_forward(torch.nn.Module(), q, k, v, additive)
    (site,) = avo_tf.decisions()
    assert site.action == "avo"
    kk, vv = (x.double().repeat_interleave(2, dim=1) for x in (k, v))
    ref = torch.softmax(q.double() @ kk.transpose(-1, -2) / 4.0 + additive.double(), dim=-1) @ vv
    assert not keep.any(dim=-1).all(), "pad rows that see no key"
    torch.testing.assert_close(out, ref.transpose(1, 2).float(), atol=2e-5, rtol=2e-5)


def test_a_class_record_serves_as_in_a_compile_and_the_shape_is_queued(seeded: torch.Generator) -> None:
    """No exact record, a neighbour of the class tuned at 64: the call runs its kernel after verification at the
    call's shape, the decision says ``hit (class, tuned at ...)`` and the exact shape is queued for tuning, as a
    compile's site would be (graph_pass ``_handle_site``)."""
    from avo_inductor.artifact import KernelMetrics
    from avo_inductor.kernels.render import default_genome

    tuned = AttentionSpec(2, 4, 2, 64, 64, 16, dtype="float32", causal=True)
    genome = default_genome(tuned, CPU).replace(block_m=64, block_n=64)
    metrics = KernelMetrics(median_ms=1.0, speedup=0.9, baseline="flex", baseline_ms=0.9, speedup_vs_fallback=1.5,
                            fallback_ms=1.5)
    record = baseline_record(tuned, CPU, genome=genome).with_changes(metrics=metrics)
    shared_store(get_settings()).put(record)
    module = torch.nn.Module()
    module.is_causal = True
    q = torch.randn(2, 4, N, 16, generator=seeded)
    k, v = (torch.randn(2, 2, N, 16, generator=seeded) for _ in range(2))
    out, _ = avo_tf.avo_attention_forward(module, q, k, v, None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           is_causal=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-4, rtol=1e-4)
    (site,) = avo_tf.decisions()
    assert (site.kernel_id, site.tuned_at, site.spec.q_len) == (record.kernel_id, tuned, N)
    assert f"hit (class, tuned at {tuned.to_text()})" in site.summary()
    assert [p.spec.q_len for p in shared_store(get_settings()).pending()] == [N]
