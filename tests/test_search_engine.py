"""The search loop with in-test fakes: convergence, budget, failing operators, promotion into a store."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import pytest

from avo_inductor.cache.store import StoreHit
from avo_inductor.search.database import SearchDatabase
from avo_inductor.search.engine import SearchConfig, SearchEngine, SearchEvent
from avo_inductor.search.operators import StructuredOperator
from avo_inductor.search.promotion import promotion_decision, promotion_eval
from avo_inductor.search.types import Candidate, EvalResult, Stage
from avo_inductor.spec import store_key

from search_fakes import HW, SPEC, SW, TARGET, FakeEvaluator, default_genome, synthetic_speedup


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

    def put(self, record: Any) -> str:
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
    assert hit.record.source.count("@triton.jit") >= 2  # rendered by kernels.render, not a stub
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
    assert "does not beat the baseline" in outcome.rejected[SPEC.cache_key()]
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


class _EvaluateOnly:
    def __init__(self) -> None:
        self.flags: list[bool] = []

    def evaluate(self, candidates: Sequence[Candidate], promotion: bool = False) -> list[EvalResult]:
        self.flags.append(promotion)
        return [EvalResult(c.id, True, Stage.PASSED, speedup=1.5) for c in candidates]


def test_promotion_eval_falls_back_to_evaluate_flag() -> None:
    ev = _EvaluateOnly()
    res = promotion_eval(ev, Candidate("x", SPEC, genome=default_genome(SPEC)))
    assert res.ok and ev.flags == [True]


def test_promotion_keeps_a_faster_stored_kernel(tmp_path: Path) -> None:
    from avo_inductor.search.promotion import build_record

    store = FakeStore()
    champion = Candidate("old", SPEC, genome=default_genome(SPEC), operator="structured")
    store.put(build_record(champion, EvalResult("old", True, Stage.PASSED, speedup=3.0), HW, SW))
    eng, _ = _engine(tmp_path, FakeEvaluator(), store=store, generations=2)
    outcome = eng.run()
    assert "store already holds" in outcome.rejected[SPEC.cache_key()]
    assert store.lookup(SPEC, HW).record.lineage_id == "old"
