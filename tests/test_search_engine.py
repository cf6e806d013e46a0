"""The search loop with in-test fakes: convergence, budget, failing operators, promotion into a store."""
from __future__ import annotations

import dataclasses

import itertools
from pathlib import Path
from typing import Any, Sequence

import pytest

from avo_inductor.cache.store import StoreHit
from avo_inductor.kernels.tiers import kernel_for_record
from avo_inductor.search.database import PENDING, SearchDatabase
from avo_inductor.search import api
from avo_inductor.search.engine import SearchConfig, SearchEngine, SearchEvent, measured_gpu
from avo_inductor.search.errors import SearchRefused
from avo_inductor.search.operators import StructuredOperator
from avo_inductor.search.runner import latest_unfinished
from avo_inductor.search.promotion import promotion_decision, promotion_eval
from avo_inductor.search.types import Candidate, EvalResult, Stage
from avo_inductor.spec import AttentionSpec, HardwareKey, store_key

from search_fakes import HW, SPEC, SW, TARGET, FakeEvaluator, GpuReportingEvaluator, default_genome, synthetic_speedup


def _engine(tmp_path: Path, evaluator: Any, ops: Any = None, store: Any = None, **cfg: Any) -> tuple[SearchEngine, list[SearchEvent]]:
    events: list[SearchEvent] = []
    config = SearchConfig(specs=(SPEC,), **{"generations": 20, "population": 6, "islands": 2, "seed": 0, **cfg})
    ops = ops or [(StructuredOperator(valid=None), 1.0)]
    eng = SearchEngine(SearchDatabase(tmp_path / "s.db"), evaluator, ops, config, store=store, hardware=HW,
                       software=SW, on_event=events.append, default_genome=default_genome)
    return eng, events


class FakeStore:
    """KernelStore's put/lookup by store key, without the on-disk layers (the real store is in the CLI test)."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}

    def put(self, record: Any, publish: bool = False) -> str:
        key = store_key(record.spec, record.hardware)
        self.records[key] = record
        return key

    def lookup(self, spec: Any, hardware: Any) -> Any:
        record = self.records.get(store_key(spec, hardware))
        return StoreHit(record, "local") if record is not None else None


def test_converges_to_the_best_genome_and_promotes(tmp_path: Path) -> None:
    store = FakeStore()
    evaluator = FakeEvaluator()
    eng, events = _engine(tmp_path, evaluator, store=store)
    outcome = eng.run()
    cid, score = outcome.best[SPEC.cache_key()]
    assert score == pytest.approx(2.0)  # every TARGET knob found, from a default 6 knobs away
    best = eng.db.candidate(outcome.run_id, cid)
    assert best is not None and best.genome is not None
    assert all(getattr(best.genome, k) == v for k, v in TARGET.items())
    assert evaluator.promoted == [cid]
    hit = store.lookup(SPEC, HW)
    assert hit is not None and hit.record.metrics.speedup == pytest.approx(2.0)
    assert hit.record.lineage_id == cid and hit.record.operator == "structured"
    assert hit.record.genome == best.genome.to_dict() and hit.record.launch["BLOCK_M"] == TARGET["block_m"]
    assert outcome.promoted[SPEC.cache_key()] == hit.record.kernel_id
    assert hit.record.tier == "template"  # a genome winner is stored as template + genome, re-rendered on load
    assert kernel_for_record(hit.record).source.count("@triton.jit") >= 2  # rendered by kernels.render, not a stub
    assert [s.candidate_id for s in eng.db.lineage(hit.record.kernel_id)][-1] == cid
    kinds = {e.kind for e in events}
    assert {"run_started", "generation", "evaluated", "migration", "promotion", "run_finished"} <= kinds
    assert events[-1].best[SPEC.cache_key()] == pytest.approx(2.0)
    failed = [r for _, r in eng.db.evaluated(outcome.run_id) if not r.ok]
    assert failed and all(r.stage is Stage.COMPILE for r in failed)  # failures are recorded as data


def test_same_seed_same_search(tmp_path: Path) -> None:
    runs = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        eng, _ = _engine(tmp_path / sub, FakeEvaluator(), generations=4, promote=False)
        out = eng.run()
        runs.append([c.id for c, _ in eng.db.evaluated(out.run_id)])
    assert runs[0] == runs[1]


def test_promotion_rejects_gain_within_spread(tmp_path: Path) -> None:
    store = FakeStore()
    eng, _ = _engine(tmp_path, FakeEvaluator(spread=0.05, promote_speedup=1.03), store=store, generations=2)
    outcome = eng.run()
    assert "does not beat it by more than the spread" in outcome.rejected[SPEC.cache_key()]
    assert store.lookup(SPEC, HW) is None
    ok, _ = promotion_decision(EvalResult("x", True, Stage.PASSED, speedup=0.5), require_speedup=False)
    assert ok  # CPU interpreter runs store verified kernels without a speedup


def test_budget_stops_the_run(tmp_path: Path) -> None:
    ticks = itertools.count()
    eng, events = _engine(tmp_path, FakeEvaluator(), generations=50, budget_s=5.0, promote=False)
    eng.clock = lambda: float(next(ticks))  # every clock read is one "second"
    outcome = eng.run()
    assert outcome.stop_reason == "budget"
    assert eng.db.get_run(outcome.run_id).generation < 50
    assert events[-1].kind == "run_finished" and events[-1].budget_left_s == 0.0


class _Broken:
    name = "agent"

    def propose(self, parents: Sequence[tuple[Candidate, EvalResult | None]], n: int, seed: int) -> list[Candidate]:
        raise ConnectionError("API unreachable")


def test_broken_operator_is_noted_not_fatal(tmp_path: Path) -> None:
    eng, events = _engine(tmp_path, FakeEvaluator(), ops=[(StructuredOperator(valid=None), 1.0), (_Broken(), 1.0)],
                          generations=3, promote=False)
    outcome = eng.run()
    assert outcome.best[SPEC.cache_key()][1] > synthetic_speedup(default_genome(SPEC))
    assert any(e.kind == "note" and "API unreachable" in e.message for e in events)


class _WrongAnswer(FakeEvaluator):
    def promote(self, candidate: Candidate) -> EvalResult:
        return EvalResult("someone-else", True, Stage.PASSED, speedup=1.5)


def test_promotion_eval_refuses_an_answer_about_another_candidate() -> None:
    with pytest.raises(RuntimeError, match="asked about"):
        promotion_eval(_WrongAnswer(), Candidate("x", SPEC, genome=default_genome(SPEC)))


def test_promotion_keeps_a_faster_stored_kernel(tmp_path: Path) -> None:
    from avo_inductor.search.promotion import build_record

    store = FakeStore()
    champion = Candidate("old", SPEC, genome=default_genome(SPEC), operator="structured")
    store.put(build_record(champion, EvalResult("old", True, Stage.PASSED, speedup=3.0), HW, SW))
    eng, _ = _engine(tmp_path, FakeEvaluator(), store=store, generations=2)
    outcome = eng.run()
    assert "store already holds" in outcome.rejected[SPEC.cache_key()]
    assert store.lookup(SPEC, HW).record.lineage_id == "old"


class _Batching:
    """promote_many with two devices; the batch holding candidate "boom" raises."""

    parallelism = 2

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def promote_many(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        ids = [c.id for c in candidates]
        self.batches.append(ids)
        if "boom" in ids:
            raise RuntimeError("worker pool died")
        return [EvalResult(c.id, True, Stage.PASSED, speedup=1.2) for c in candidates]


def test_promotion_batches_by_parallelism_and_isolates_failures() -> None:
    from avo_inductor.search.promotion import promotion_eval_batch

    ev = _Batching()
    cands = [Candidate(cid, SPEC, genome=default_genome(SPEC)) for cid in ("a", "b", "boom", "c", "d")]
    results = list(promotion_eval_batch(ev, cands))
    assert ev.batches == [["a", "b"], ["boom", "c"], ["d"]]
    assert [r.candidate_id for r in results] == ["a", "b", "boom", "c", "d"]
    assert [r.ok for r in results] == [True, True, False, False, True]
    assert results[2].stage is Stage.PROMOTION and "worker pool died" in results[2].message


class _Killed(BaseException):
    """Stands in for SIGKILL/Ctrl-C at one exact point (BaseException: the engine must not swallow it)."""


def _generation_sets(db: SearchDatabase, run_id: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for c in db.candidates(run_id):
        out.setdefault(c.generation, []).append(c.id)
    return out


def test_resume_after_a_kill_before_complete_generation_does_not_repeat_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: killed between a generation's last evaluated batch and ``complete_generation``, the resumed
    run proposed (and evaluated) a second set for the same generation, and could migrate twice."""
    cfg = dict(generations=4, population=4, islands=2, migration_interval=2, eval_batch=2, promote=False)
    clean, _ = _engine(tmp_path / "clean", FakeEvaluator(), **cfg)
    clean_id = clean.run().run_id
    killed_gen = 2  # a migration generation: its migration must be recorded exactly once
    eng, _ = _engine(tmp_path / "killed", FakeEvaluator(), **cfg)
    real = eng.db.complete_generation

    def die_once(run_id: str, generation: int, migrations=()) -> None:
        if generation == killed_gen + 1:
            raise _Killed()
        real(run_id, generation, migrations)

    monkeypatch.setattr(eng.db, "complete_generation", die_once)
    with pytest.raises(_Killed):
        eng.run()
    (info,) = eng.db.runs()
    assert info.generation == killed_gen and info.pending == 0  # every candidate of the generation is done
    before = _generation_sets(eng.db, info.id)
    monkeypatch.setattr(eng.db, "complete_generation", real)
    evaluator = FakeEvaluator()
    resumed, events = _engine(tmp_path / "killed", evaluator, **cfg)
    resumed.run(run_id=info.id)
    after = _generation_sets(resumed.db, info.id)
    assert after[killed_gen] == before[killed_gen]  # no second set proposed for the killed generation
    assert not set(before[killed_gen]) & {cid for call in evaluator.calls for cid in call}  # nor re-evaluated
    assert any(e.kind == "note" and f"generation {killed_gen} was fully evaluated" in e.message for e in events)
    # The same search as one uninterrupted run: same candidates per generation, each migration recorded once.
    assert after == _generation_sets(clean.db, clean_id)
    assert resumed.db.migrations(info.id) == clean.db.migrations(clean_id)
    assert resumed.db.get_run(info.id).generation == cfg["generations"] + 1


class _DeadlineRecorder(StructuredOperator):
    """A structured operator that also records the deadline the engine hands it (as the agent would take it)."""

    def __init__(self) -> None:
        super().__init__(valid=None)
        self.deadlines: list[tuple[float | None, Any]] = []

    def set_deadline(self, deadline: float | None, clock: Any = None) -> None:
        self.deadlines.append((deadline, clock))


def test_engine_hands_its_wall_clock_deadline_to_operators(tmp_path: Path) -> None:
    """The agent's session checks the search's deadline itself (see test_agent.py); the engine must give it one,
    on the engine's own clock, before each generation's proposals."""
    now = [0.0]
    op = _DeadlineRecorder()
    eng, _ = _engine(tmp_path, FakeEvaluator(), ops=[(op, 1.0)], generations=2, budget_s=100.0, promote=False)
    eng.clock = lambda: now[0]
    eng.run()
    assert len(op.deadlines) == 2  # generations 1 and 2 (generation 0 is the seeds)
    assert all(d == pytest.approx(100.0) and clock is eng.clock for d, clock in op.deadlines)
    unbounded = _DeadlineRecorder()
    eng, _ = _engine(tmp_path / "u", FakeEvaluator(), ops=[(unbounded, 1.0)], generations=1, promote=False)
    eng.run()
    assert [d for d, _ in unbounded.deadlines] == [None]


def test_campaign_seed_genomes_join_the_seeds_and_batches_interleave_specs(tmp_path: Path) -> None:
    from avo_inductor.search.engine import _round_robin_by_spec

    other = AttentionSpec(1, 2, 2, 64, 64, 32, dtype="float16", causal=True)
    eng, _ = _engine(tmp_path, FakeEvaluator())
    eng.config = SearchConfig(specs=(SPEC, other), generations=0, seed_variants=0, islands=2,
                              seed_genomes=({"block_n": 32}, {"num_warps": 2}, {"block_n": 32}, {"bwd_block_n": 128}))
    seeds = eng._seeds()
    per_spec = [c for c in seeds if c.spec == SPEC]
    # default + two distinct campaign seeds: the repeated override is dropped, and so is the backward-only one
    # (SPEC is forward-only: it would only re-evaluate the default forward kernel)
    assert not SPEC.needs_grad and len(per_spec) == 3
    assert {c.genome.block_n for c in per_spec[1:]} | {c.genome.num_warps for c in per_spec[1:]} >= {32, 2}
    assert all(c.diff.startswith("campaign seed") for c in per_spec[1:]) and [c.island for c in per_spec] == [0, 1, 0]
    order = [c.spec for c in _round_robin_by_spec(seeds)]
    assert order[:4] == [SPEC, other, SPEC, other]


def test_slice_promotes_the_best_so_far_and_leaves_the_run_resumable(tmp_path: Path) -> None:
    """GPU time in slices: a slice ends between batches, promotes what it has and pauses; the next slice resumes
    the same run (no generation repeated) and the run finishes on its own budget."""
    store = FakeStore()
    ticks = itertools.count()
    eng, events = _engine(tmp_path, FakeEvaluator(), store=store, generations=50)
    eng.clock = lambda: float(next(ticks))
    first = eng.run(slice_s=30.0)
    assert first.stop_reason == "slice"
    run = eng.db.get_run(first.run_id)
    assert run.status == "paused" and 0 < run.generation < 50
    assert store.lookup(SPEC, HW) is not None  # the slice's best was promoted, not held back for a later slice
    seen = {c.id for c, _ in eng.db.evaluated(first.run_id)}
    eng2, _ = _engine(tmp_path, FakeEvaluator(), store=store, generations=run.generation + 1)
    second = eng2.run(run_id=first.run_id)
    assert second.stop_reason == "generations" and eng2.db.get_run(first.run_id).status == "finished"
    assert seen < {c.id for c, _ in eng2.db.evaluated(first.run_id)}
    with pytest.raises(ValueError, match="slice_s"):
        eng2.run(slice_s=0.0)


def _engine_on(tmp_path: Path, evaluator: Any, hardware: HardwareKey, config: SearchConfig,
               **kwargs: Any) -> SearchEngine:
    """An engine over the database of ``_engine(tmp_path, ...)`` on another machine: ``hardware`` is its GPU."""
    return SearchEngine(SearchDatabase(tmp_path / "s.db"), evaluator, [(StructuredOperator(valid=None), 1.0)], config,
                        store=FakeStore(), hardware=hardware, software=SW, default_genome=default_genome, **kwargs)


def test_a_run_is_not_resumed_on_another_kind_of_gpu(tmp_path: Path) -> None:
    """Lent machines are an H100 one call and an H200 the next: a slice resumed on the other card would rank and
    promote by timings from two GPUs. The resume is refused before it touches the run; a run from before the GPU
    was recorded resumes as it did; `resume latest` passes over open runs of other GPUs."""
    ticks = itertools.count()
    eng, _ = _engine(tmp_path, FakeEvaluator(), store=FakeStore(), generations=50)
    eng.clock = lambda: float(next(ticks))
    first = eng.run(slice_s=30.0)
    paused = eng.db.get_run(first.run_id)
    assert paused.config["hardware"] == HW.to_dict()
    other_gpu = dataclasses.replace(HW, name="other-gpu")
    evaluator = FakeEvaluator()
    other = _engine_on(tmp_path, evaluator, other_gpu, eng.config)
    other.clock = lambda: float(next(ticks))
    with pytest.raises(SearchRefused, match=r"measured on nvidia-fake-gpu-sm90-132, this is nvidia-other-gpu-sm90-132"):
        other.run(run_id=first.run_id)
    untouched = other.db.get_run(first.run_id)
    assert evaluator.calls == [] and (untouched.status, untouched.evaluated) == ("paused", paused.evaluated)
    with pytest.raises(ValueError, match="no unfinished run measured on nvidia-other-gpu-sm90-132"):
        latest_unfinished(other.db, other_gpu)
    # A legacy run (no GPU in its config) is resumed wherever it is asked to be, and `latest` finds it.
    legacy_id = eng.db.create_run({"search": eng.config.to_dict()})
    assert latest_unfinished(other.db, other_gpu) == legacy_id and latest_unfinished(eng.db, HW) == legacy_id
    assert other.run(run_id=legacy_id, slice_s=30.0).run_id == legacy_id and evaluator.calls
    # The other GPU's own run: `latest` on each GPU picks that GPU's run.
    mine = _engine_on(tmp_path, FakeEvaluator(), other_gpu, eng.config)
    mine.clock = lambda: float(next(ticks))
    own_id = mine.run(slice_s=30.0).run_id
    assert latest_unfinished(mine.db, other_gpu) == own_id
    assert latest_unfinished(mine.db, HW) in (first.run_id, legacy_id) and latest_unfinished(mine.db, HW) != own_id


def test_ray_head_neither_records_nor_checks_its_own_gpu(tmp_path: Path) -> None:
    """With candidates timed by Ray actors the head's GPU (often none) is not the run's: it is not recorded and a
    resume from another head is not refused up front; the results' GPU is what is checked."""
    ticks = itertools.count()
    head = _engine_on(tmp_path, GpuReportingEvaluator(HW), HardwareKey("cpu", "triton-interpreter", (0, 0), 0),
                      SearchConfig(specs=(SPEC,), generations=50, population=6, islands=2, seed=0),
                      measures_locally=False)
    head.clock = lambda: float(next(ticks))
    run_id = head.run(slice_s=30.0).run_id
    assert "hardware" not in head.db.get_run(run_id).config
    other_head = _engine_on(tmp_path, GpuReportingEvaluator(HW), dataclasses.replace(HW, name="other-head"),
                            head.config, measures_locally=False)
    other_head.clock = lambda: float(next(ticks))
    assert other_head.run(run_id=run_id, slice_s=30.0).stop_reason == "slice"
    (run,) = api.status(tmp_path / "s.db")
    assert run.gpu == HW.slug  # from the actors' results


def test_results_from_another_gpu_are_refused_before_they_are_recorded(tmp_path: Path) -> None:
    """Where the engine cannot know the evaluating GPU up front (Ray actors on other machines, a run from before
    runs recorded their GPU), the results tell it: a batch timed on another GPU than the run's earlier results is
    refused, nothing of it recorded, its candidates queued again for the right GPU."""
    ticks = itertools.count()
    eng, _ = _engine(tmp_path, GpuReportingEvaluator(HW), store=FakeStore(), generations=50)
    eng.clock = lambda: float(next(ticks))
    run_id = eng.run(slice_s=30.0).run_id
    before = eng.db.get_run(run_id)
    other_gpu = GpuReportingEvaluator(dataclasses.replace(HW, name="other-gpu"))
    resumed = _engine_on(tmp_path, other_gpu, HW, eng.config)
    with pytest.raises(SearchRefused, match=r"measured on nvidia-fake-gpu-sm90-132, but candidate .* was timed on "
                                            r"nvidia-other-gpu-sm90-132"):
        resumed.run(run_id=run_id)
    after = resumed.db.get_run(run_id)
    assert other_gpu.calls and after.evaluated == before.evaluated and after.status == "interrupted"
    refused = set(other_gpu.calls[0])
    assert refused <= {c.id for c in resumed.db.candidates(run_id, PENDING)}  # back in the queue
    assert not refused & {c.id for c, _ in resumed.db.evaluated(run_id)}  # and nothing of them recorded
    # The same GPU again continues the run.
    same = _engine_on(tmp_path, GpuReportingEvaluator(HW), HW, eng.config)
    same.clock = lambda: float(next(ticks))
    assert same.run(run_id=run_id, slice_s=30.0).stop_reason == "slice"
    assert same.db.get_run(run_id).evaluated > before.evaluated
    # `status` names the run's GPU: what its results report, else the key it recorded (none for a legacy run).
    (run,) = api.status(tmp_path / "s.db")
    assert run.gpu == HW.slug and run.to_dict()["gpu"] == HW.slug
    cfg = same.db.get_run(run_id).config
    assert measured_gpu(cfg, []) == HW.slug and measured_gpu({"search": cfg["search"]}, []) is None


def test_a_slice_ending_before_a_spec_ran_says_so(tmp_path: Path) -> None:
    """A slice that stops before a spec's first candidate was evaluated reports it as not evaluated yet (it was
    "no candidate passed the cascade", which read as every candidate failing)."""
    other = AttentionSpec(1, 2, 2, 64, 64, 32, dtype="float16", causal=True)
    ticks = itertools.count()
    eng, _ = _engine(tmp_path, FakeEvaluator(), store=FakeStore(), generations=1, eval_batch=1, seed_variants=0,
                     islands=1)
    eng.config = dataclasses.replace(eng.config, specs=(SPEC, other))
    eng.clock = lambda: float(next(ticks))
    outcome = eng.run(slice_s=2.5)  # a tick per clock read: the first spec's seed runs, the second's waits
    assert outcome.stop_reason == "slice"
    assert outcome.rejected[other.cache_key()] == "not evaluated yet (1 candidate(s) pending: resume the run)"
    assert SPEC.cache_key() not in outcome.rejected or "pending" not in outcome.rejected[SPEC.cache_key()]


class _KilledMidPromotion(FakeEvaluator):
    """Re-measures the first winner, then the device call ends (the process is killed) during the second."""

    def promote_many(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        if self.promoted:
            raise _Killed()
        return super().promote_many(candidates)


def test_a_kill_during_promotion_keeps_the_winners_already_re_measured(tmp_path: Path) -> None:
    """Promotion re-measures winners one batch at a time and stores each before the next: a device call that ends
    mid-promotion keeps what it re-measured (the whole list was re-measured before anything was stored)."""
    other = AttentionSpec(1, 2, 2, 64, 64, 32, dtype="float16", causal=True)
    store = FakeStore()
    eng, _ = _engine(tmp_path, _KilledMidPromotion(), store=store, generations=1, islands=1)
    eng.config = dataclasses.replace(eng.config, specs=(SPEC, other))
    with pytest.raises(_Killed):
        eng.run()
    assert len(store.records) == 1  # the first winner stored; the second's re-measurement was cut off
    assert len(eng.evaluator.promoted) == 1


def test_a_clearly_slower_best_is_not_re_measured(tmp_path: Path) -> None:
    """Promotion re-measurement costs a worker per spec; a best far below 1x is rejected without it."""
    evaluator = FakeEvaluator(scale=0.25)  # every candidate well below the baseline
    eng, _ = _engine(tmp_path, evaluator, store=FakeStore(), generations=1)
    outcome = eng.run()
    assert "not re-measured" in outcome.rejected[SPEC.cache_key()]
    assert evaluator.promoted == []


@pytest.mark.parametrize("case", ["promoted, in the store", "promoted, fresh store", "fell short"])
def test_a_later_slice_does_not_re_measure_a_decided_best(tmp_path: Path, case: str) -> None:
    """Every slice ends with promotion; a spec whose best is still the candidate an earlier slice decided on is
    not re-measured (10-100 s a spec on an H100) when its record is in the store or its re-measurement fell short.
    A host with a fresh store (no record) decides again."""
    store = FakeStore()
    evaluator = FakeEvaluator(promote_speedup=0.9 if case == "fell short" else None)
    ticks = itertools.count()
    eng, events = _engine(tmp_path, evaluator, store=store, generations=50)
    eng.clock = lambda: float(next(ticks))
    first = eng.run(slice_s=30.0)
    assert len(evaluator.promoted) == 1
    if case == "promoted, fresh store":
        eng.store = FakeStore()
    again = eng._promote_all(first.run_id, "slice")
    key = SPEC.cache_key()
    if case == "promoted, fresh store":
        assert len(evaluator.promoted) == 2 and key in again.promoted
        return
    assert len(evaluator.promoted) == 1  # decided before: no second re-measurement
    if case == "fell short":
        assert key not in again.promoted and "earlier slice" in again.rejected[key]
    else:
        assert "earlier slice" in again.promoted[key] and again.promoted[key].startswith(store.lookup(SPEC, HW)
                                                                                         .record.kernel_id)
    assert any(e.kind == "promotion" and "earlier slice" in e.message for e in events)


def _kernel_at(spec: AttentionSpec, genome: Any, speedup: float) -> Any:
    """A promoted record of ``genome`` tuned at ``spec``, as the engine writes one."""
    from avo_inductor.search.promotion import build_record

    cand = Candidate(id=f"tuned-{spec.q_len}", spec=spec, genome=genome, operator="structured")
    result = EvalResult(cand.id, True, Stage.PASSED, speedup=speedup, spread=0.02, median_ms=1.0 / speedup,
                        baseline_ms=1.0, baseline="sdpa", speedup_vs_fallback=speedup, fallback_ms=1.0)
    return build_record(cand, result, HW, SW)


@pytest.mark.parametrize("where", ["class", "exact"])
def test_the_kernel_the_model_runs_today_is_a_seed_and_a_search_never_promotes_a_slower_one(
        tmp_path: Path, where: str) -> None:
    """A model's site served by a class record (tuned at 512 tokens) or an exact record: the search at the site's
    shape seeds that kernel, so its promotion is the faster of it and what the search found. Without the seed this
    one-generation search promotes the default genome (1.1x), an exact record that would shadow the neighbour's
    2.0x kernel and make the model slower than out of the box."""
    from avo_inductor.cache.store import KernelStore

    best = default_genome(SPEC).replace(**TARGET)
    tuned_at = dataclasses.replace(SPEC, q_len=512, kv_len=512) if where == "class" else SPEC
    store = KernelStore(tmp_path / "store", shipped=False, software=SW)
    store.put(_kernel_at(tuned_at, best, speedup=1.9 if where == "exact" else 1.5))
    eng, _ = _engine(tmp_path, FakeEvaluator(), store=store, generations=0, seed_variants=0)
    seeds = eng._seeds()
    incumbent = [c for c in seeds if c.diff.startswith("incumbent")]
    assert len(seeds) == 2 and len(incumbent) == 1 and incumbent[0].genome == best
    assert ("class record tuned at" in incumbent[0].diff) == (where == "class")
    outcome = eng.run()
    hit = store.lookup(SPEC, HW)
    assert hit is not None and hit.record.genome == best.to_dict()
    if where == "class":  # the exact record now holds the neighbour's kernel, measured at this shape
        assert outcome.promoted[SPEC.cache_key()] == hit.record.kernel_id
        assert hit.record.metrics.speedup == pytest.approx(2.0)


def test_no_incumbent_seed_without_a_record_or_a_class_lookup(tmp_path: Path) -> None:
    from avo_inductor.cache.store import KernelStore

    for store in (KernelStore(tmp_path / "empty", shipped=False, software=SW), FakeStore(), None):
        eng, _ = _engine(tmp_path, FakeEvaluator(), store=store, generations=0, seed_variants=0)
        assert [c.diff for c in eng._seeds()] == ["default genome"]
