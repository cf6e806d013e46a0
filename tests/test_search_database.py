"""Population database: round trip, lineage, corrupt files, and resume after a SIGKILL mid-run."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.search.database import DONE, EVALUATING, PENDING, SearchDatabase
from avo_inductor.search.engine import SearchConfig, SearchEngine
from avo_inductor.search.operators import StructuredOperator, content_hash
from avo_inductor.search.types import Candidate, EvalResult, Stage

from search_fakes import HW, SPEC, SW, FakeEvaluator, default_genome

HERE = Path(__file__).resolve().parent


def _cand(cid: str, parents: tuple[str, ...] = (), **knobs: object) -> Candidate:
    return Candidate(cid, SPEC, genome=KernelGenome(**knobs), parent_ids=parents, operator="structured",  # type: ignore[arg-type]
                     diff=f"made {cid}", generation=len(parents))


def test_round_trip_best_and_lineage(tmp_path: Path) -> None:
    with SearchDatabase(tmp_path / "s.db") as db:
        run = db.create_run({"search": {"x": 1}})
        a, b, c = _cand("a"), _cand("b", ("a",), block_n=32), _cand("c", ("b", "a"), num_warps=8)
        assert db.add_candidates(run, [a, b, c], [content_hash(x) for x in (a, b, c)]) == [a, b, c]
        assert db.add_candidates(run, [a], [content_hash(a)]) == []  # duplicate id in a run
        assert [x.id for x in db.candidates(run, PENDING)] == ["a", "b", "c"]
        db.mark_evaluating(run, ["a", "b"])
        db.record_results(run, [EvalResult("a", True, Stage.PASSED, speedup=1.1),
                                EvalResult("b", False, Stage.COMPILE, message="boom")])
        db.mark_evaluating(run, ["c"])
        db.record_results(run, [EvalResult("c", True, Stage.PASSED, speedup=1.4, spread=0.01)])
        assert db.candidate(run, "c") == c
        assert db.result(run, "b") == EvalResult("b", False, Stage.COMPILE, message="boom")
        assert [x.id for x, _ in db.evaluated(run)] == ["a", "b", "c"]
        info = db.get_run(run)
        assert (info.evaluated, info.failed, info.pending, info.config) == (3, 1, 0, {"search": {"x": 1}})
        best = db.bests()
        assert [(e.spec_key, e.candidate_id, e.speedup) for e in best] == [(SPEC.cache_key(), "c", 1.4)]
        db.record_promotion("kern123", run, "c", SPEC.cache_key(), "hw/key", 1.4)
        for ref in ("kern123", "c", SPEC.cache_key()):
            steps = db.lineage(ref)
            assert [s.candidate_id for s in steps] == ["a", "b", "c"]
        assert steps[-1].parent_ids == ("b", "a") and steps[1].ok is False and steps[1].message == "boom"
        assert db.bests()[0].kernel_id == "kern123"
        with pytest.raises(ValueError, match="not a kernel id"):
            db.lineage("nope")
    with SearchDatabase(tmp_path / "s.db") as db:  # reopen: everything persisted
        assert db.runs()[0].evaluated == 3


def test_requeue_in_flight(tmp_path: Path) -> None:
    with SearchDatabase(tmp_path / "s.db") as db:
        run = db.create_run({})
        a, b = _cand("a"), _cand("b", block_n=32)
        db.add_candidates(run, [a, b], [content_hash(a), content_hash(b)])
        db.mark_evaluating(run, ["a", "b"])
        db.record_results(run, [EvalResult("a", True, Stage.PASSED, speedup=1.0)])
        assert db.requeue_in_flight(run) == 1
        assert [x.id for x in db.candidates(run, PENDING)] == ["b"]
        assert [x.id for x in db.candidates(run, DONE)] == ["a"]
        assert db.candidates(run, EVALUATING) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_database_gives_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "search.db"
    if damage == "garbage":
        path.write_bytes(b"this is not sqlite" * 200)
    else:
        with SearchDatabase(path) as db:
            run = db.create_run({"pad": "x" * 20000})
            db.add_candidates(run, [_cand(f"c{i}", block_n=32) for i in range(1)], ["h"])
        for extra in ("-wal", "-shm"):
            Path(str(path) + extra).unlink(missing_ok=True)
        data = path.read_bytes()
        path.write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    with pytest.raises(RuntimeError) as err:
        SearchDatabase(path)
    assert str(path) in str(err.value) and "move it aside" in str(err.value)

    from avo_inductor.search.cli import main
    assert main(["status", "--db", str(path)]) == 1  # failed (exit 1): one line on stderr, no traceback


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from avo_inductor.search.database import SearchDatabase
    from avo_inductor.search.engine import SearchConfig, SearchEngine
    from avo_inductor.search.operators import StructuredOperator
    from search_fakes import HW, SPEC, SW, FakeEvaluator, default_genome
    cfg = SearchConfig(specs=(SPEC,), generations=6, population=4, islands=2, eval_batch=2, seed=3, promote=False)
    db = SearchDatabase({db!r})
    SearchEngine(db, FakeEvaluator(delay_s=0.15), [(StructuredOperator(valid=None), 1.0)], cfg, hardware=HW,
                 software=SW, default_genome=default_genome).run(run_id=None)
""")


def test_resume_after_sigkill_loses_only_in_flight(tmp_path: Path) -> None:
    db_path = tmp_path / "kill.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(tests=str(HERE), db=str(db_path))], env=env)
    deadline = time.monotonic() + 60
    done_before = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if not db_path.exists():
                continue
            try:
                with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
                    done_before = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done_before >= 10:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and done_before >= 10, "the search finished or never started"

    with SearchDatabase(db_path) as db:
        (info,) = db.runs()
        assert info.status == "running"  # SIGKILL: nobody marked it
        evaluated_before = {c.id for c, _ in db.evaluated(info.id)}
        known_before = {c.id for c in db.candidates(info.id)}
        assert len(evaluated_before) >= 10
        evaluator = FakeEvaluator()
        cfg = SearchConfig.from_dict(info.config["search"])
        outcome = SearchEngine(db, evaluator, [(StructuredOperator(valid=None), 1.0)], cfg, hardware=HW,
                               software=SW, default_genome=default_genome).run(run_id=info.id)
        after = db.get_run(info.id)
        assert after.status == "finished" and after.pending == 0 and after.generation == cfg.generations + 1
        evaluated_after = {c.id for c, _ in db.evaluated(info.id)}
        assert evaluated_before <= evaluated_after and known_before <= evaluated_after
        re_evaluated = evaluated_before & {cid for call in evaluator.calls for cid in call}
        assert not re_evaluated  # finished work is never redone; only in-flight/pending ones are
        assert outcome.best[SPEC.cache_key()][1] >= max(r.score for _, r in db.evaluated(info.id)) - 1e-9
        assert after.budget_spent_s > 0
