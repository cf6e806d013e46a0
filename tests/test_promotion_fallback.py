"""Promotion against the fallback: a kernel is stored when it beats what the model would run without it (SDPA with
the dense mask) by more than the measured spread, even when FlexAttention is faster still; both speedups are kept.

The parent's side is run for real (search/evaluate.py ``_time``: it judges the timed outputs and computes the
speedups from the worker's raw timings); the worker's reply is played by ``_TimingWorker``, because a CPU
interpreter kernel is never faster than SDPA, so the "window kernel between SDPA and Flex" case needs given times.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from search_fakes import HW, SW, FakeEvaluator, default_genome

from avo_inductor.check.cases import case_inputs
from avo_inductor.check.run import input_digest, timed_output_path
from avo_inductor.kernels.reference import attention_reference, reference_lse
from avo_inductor.search.bench import FALLBACK
from avo_inductor.search.engine import SearchConfig, SearchEngine
from avo_inductor.search.database import SearchDatabase
from avo_inductor.search.operators import StructuredOperator
from avo_inductor.search.promotion import build_record, promotion_decision
from avo_inductor.search.types import Candidate, EvalResult, Stage
from avo_inductor.spec import AttentionSpec, store_key

WINDOW = AttentionSpec(2, 4, 2, 40, 40, 16, dtype="float32", causal=True, window=8)


ROUND_NOISE = (-1.0, -0.5, 0.0, 0.5, 1.0)  # per-round deviations, in units of the fake's noise


def _timing(ms: float, noise: float, drift: tuple[float, ...] = (0.0,) * 5) -> dict[str, Any]:
    """Raw per-round samples as the worker sends them: ``ms`` times (1 + noise * ROUND_NOISE[r]) times the round's
    ``drift`` (shared by every fn timed in that round, as a clock change is)."""
    samples = [ms * (1 + noise * u) * (1 + d) for u, d in zip(ROUND_NOISE, drift, strict=True)]
    med = sorted(samples)[len(samples) // 2]
    return {"median_ms": med, "spread": (max(samples) - min(samples)) / med, "samples_ms": samples,
            "method": "do_bench"}


class _Reply:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.status, self.payload = "ok", payload
        self.marks = (("rtt", 0.0), ("rtt_done", 0.001), ("wall", 1.0), ("wall_done", 1.021))


class _TimingWorker:
    """Answers the parent's "time" op as the worker does: right outputs of the timed calls in the parent's folder,
    raw timings of the candidate, the best built-in and (when asked for one) the fallback."""

    def __init__(self, candidate_ms: float, builtin_ms: float, fallback_ms: float, spread: float,
                 drift: tuple[float, ...] = (0.0,) * 5) -> None:
        self.ms = (candidate_ms, builtin_ms, fallback_ms)
        self.spread, self.drift = spread, drift
        self.worker = type("W", (), {"device": "cpu"})()
        self.asked: dict[str, Any] = {}

    def ask(self, stage: Any, message: dict[str, Any]) -> _Reply:
        self.asked = message
        spec, seeds = AttentionSpec.from_dict(message["spec"]), message["seeds"]
        kw = dict(scale=spec.scale, causal=spec.causal, window=spec.window, mask_kind=spec.mask.value)
        for i in range(len(seeds) + 1):
            x = case_inputs(spec, seeds[i % len(seeds)], "cpu")
            out = attention_reference(x.q, x.k, x.v, mask=x.mask, compute_dtype=torch.float32, **kw)
            torch.save({"out1": out.to(spec.torch_dtype), "lse1": reference_lse(x.q, x.k, mask=x.mask, **kw).float(),
                        "digest_x": input_digest(x), "input_index": i % len(seeds)},
                       timed_output_path(message["out_dir"], i))
        cand, builtin, fallback = self.ms
        payload = {"candidate": _timing(cand, self.spread, self.drift), "baseline": _timing(builtin, 0.0, self.drift),
                   "wall_calls": 20, "method": "do_bench"}
        if message.get("fallback") not in (None, message["baseline"]):
            payload["fallback"] = _timing(fallback, 0.0, self.drift)
        return _Reply(payload)


def _evaluate(worker: _TimingWorker, tmp_path: Path) -> EvalResult:
    """The parent's timing stage on ``worker``'s raw reply, as the cascade would call it, to an EvalResult."""
    from avo_inductor.search.evaluate import SandboxedEvaluator

    baselines = {"best": "flex", "ms": {"flex": worker.ms[1], FALLBACK: worker.ms[2]}, "method": "do_bench"}
    ev = SandboxedEvaluator(["cpu"])
    out = ev._time(worker, {"promotion": True, "quick": False}, WINDOW, baselines, str(tmp_path),
                   torch.device("cpu"), random.Random(0))
    assert worker.asked["baseline"] == "flex" and worker.asked["fallback"] == FALLBACK
    assert out["extra"]["timed_outputs_checked"] == 3  # every buffer of the timed calls judged
    return EvalResult("cand", True, Stage.PASSED, extra=out.pop("extra"), **out)


def test_faster_than_the_fallback_slower_than_flex_is_promoted_with_both_figures(tmp_path: Path) -> None:
    """A window kernel at 1.0 ms between Flex (0.8 ms) and dense-mask SDPA (2.5 ms) is stored: it is what the
    model would otherwise run that it beats. The record keeps 2.5x over the fallback and 0.8x over Flex."""
    result = _evaluate(_TimingWorker(1.0, 0.8, 2.5, spread=0.05), tmp_path)
    assert result.speedup == pytest.approx(0.8) and result.baseline == "flex"
    assert result.speedup_vs_fallback == pytest.approx(2.5) and result.fallback_ms == pytest.approx(2.5)
    ok, why = promotion_decision(result)
    assert ok, why
    assert "2.500x over the fallback" in why and "0.800x the best built-in (flex)" in why
    record = build_record(Candidate("cand", WINDOW, genome=default_genome(WINDOW)), result, HW, SW)
    m = record.metrics
    assert (m.speedup_vs_fallback, m.fallback_ms, m.speedup_vs_best_builtin, m.baseline) == \
        (pytest.approx(2.5), pytest.approx(2.5), pytest.approx(0.8), "flex")
    assert type(m).from_dict(m.to_dict()) == m


@pytest.mark.parametrize(("fallback_ms", "noise", "promoted"), [
    (1.04, 0.05, False),  # 4 % faster than the fallback, the ratio known to +-5.3 %: noise
    (1.06, 0.05, True),
    (0.90, 0.01, False),  # slower than the fallback, however it compares to Flex
])
def test_the_gain_over_the_fallback_must_exceed_the_spread(fallback_ms: float, noise: float, promoted: bool,
                                                           tmp_path: Path) -> None:
    result = _evaluate(_TimingWorker(1.0, 0.5, fallback_ms, spread=noise), tmp_path)
    # The spread of the comparison promotion decides on (candidate vs fallback), paired round by round: with the
    # candidate alone noisy, the ratio's extreme rounds are 1 / (1 -+ noise) off its median.
    assert result.spread == pytest.approx(noise / (1 - noise))
    ok, why = promotion_decision(result)
    assert ok is promoted, why
    if not promoted:
        assert "does not beat it by more than the spread" in why


def test_drift_shared_by_candidate_and_fallback_does_not_hide_a_win(tmp_path: Path) -> None:
    """A 3 % win measured while the clock wandered by 12 % across rounds: every fn's own range is 12 %, the
    round-by-round ratio did not move, so the win is certified (a per-fn spread would have refused it)."""
    drift = (0.0, 0.12, 0.03, 0.08, -0.01)
    result = _evaluate(_TimingWorker(1.0, 0.5, 1.03, spread=0.0, drift=drift), tmp_path)
    assert result.extra["spread_per_fn"] > 0.1 and result.spread == pytest.approx(0.0, abs=1e-9)
    ok, why = promotion_decision(result)
    assert ok, why


def test_a_reply_whose_round_counts_differ_is_a_timing_failure(tmp_path: Path) -> None:
    worker = _TimingWorker(1.0, 0.5, 2.0, spread=0.01)
    ask = worker.ask

    def short_fallback(stage: Any, message: dict[str, Any]) -> _Reply:
        reply = ask(stage, message)
        reply.payload["fallback"]["samples_ms"] = reply.payload["fallback"]["samples_ms"][:3]
        return reply

    worker.ask = short_fallback  # type: ignore[method-assign]
    from avo_inductor.search.evaluate import _Failed

    with pytest.raises(_Failed, match="malformed timing"):
        _evaluate(worker, tmp_path)


@pytest.mark.parametrize("claim", ["median", "nan"])
def test_the_parent_computes_the_medians_from_the_samples(claim: str, tmp_path: Path) -> None:
    """A worker whose reply claims a candidate median (or samples) other than what it timed: 1.0 ms against a
    1.04 ms fallback is noise, whatever "median_ms" says; a non-finite sample is a timing failure."""
    worker = _TimingWorker(1.0, 0.5, 1.04, spread=0.05)
    ask = worker.ask

    def lying(stage: Any, message: dict[str, Any]) -> _Reply:
        reply = ask(stage, message)
        if claim == "median":
            reply.payload["candidate"]["median_ms"] = 0.1
        else:
            reply.payload["candidate"]["samples_ms"][0] = float("nan")
        return reply

    worker.ask = lying  # type: ignore[method-assign]
    if claim == "nan":
        from avo_inductor.search.evaluate import _Failed

        with pytest.raises(_Failed, match="finite positive"):
            _evaluate(worker, tmp_path)
        return
    result = _evaluate(worker, tmp_path)
    assert result.median_ms == pytest.approx(1.0) and result.speedup_vs_fallback == pytest.approx(1.04)
    ok, why = promotion_decision(result)
    assert not ok, why


def test_no_fallback_timing_no_promotion() -> None:
    """An evaluation that timed only the best built-in (an older evaluator) proves nothing about the fallback."""
    ok, why = promotion_decision(EvalResult("x", True, Stage.PASSED, speedup=3.0, spread=0.01))
    assert not ok and "fallback was not timed" in why


def test_records_written_before_the_fallback_was_timed_still_load() -> None:
    from avo_inductor.artifact import KernelMetrics

    old = KernelMetrics.from_dict({"median_ms": 1.0, "speedup": 1.3, "baseline": "sdpa_cudnn", "baseline_ms": 1.3})
    assert old.speedup_vs_best_builtin == pytest.approx(1.3) and old.speedup_vs_fallback is None


def test_the_search_stores_a_kernel_that_only_beats_the_fallback(tmp_path: Path) -> None:
    """End to end through the engine: every candidate is slower than the best built-in (0.45x-0.9x) but the
    fallback is 3x slower than that built-in, so the winner is re-measured, promoted and stored with both figures."""
    from avo_inductor.cache.store import KernelStore

    store = KernelStore(tmp_path / "store", shipped=False)
    spec = AttentionSpec(2, 4, 4, 256, 256, 64, causal=True, window=64)
    config = SearchConfig(specs=(spec,), generations=4, population=6, islands=2, seed=0)
    engine = SearchEngine(SearchDatabase(tmp_path / "s.db"), FakeEvaluator(scale=0.45, fallback_factor=3.0),
                          [(StructuredOperator(valid=None), 1.0)], config, store=store, hardware=HW, software=SW,
                          default_genome=default_genome)
    outcome = engine.run()
    assert spec.cache_key() in outcome.promoted, outcome.rejected
    hit = store.lookup(spec, HW)
    assert hit is not None and hit.key == store_key(spec, HW)
    record = hit.record
    assert record.metrics.speedup < 1.0 < 2.0 < record.metrics.speedup_vs_fallback
    assert record.metrics.speedup_vs_fallback == pytest.approx(3.0 * record.metrics.speedup)
