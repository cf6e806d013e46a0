"""The CLI's library layer (runner): run from a campaign / the pending queue, status, lineage, resume, and the
one-line errors of the thin argparse front end. Asserts on returned data, never on stdout."""
from __future__ import annotations

import sys

from pathlib import Path

import pytest
import torch

from avo_inductor.cache.store import KernelStore
from avo_inductor.search import runner
from avo_inductor.search.cli import main
from avo_inductor.search.database import SearchDatabase
from avo_inductor.search.engine import SearchEvent
from avo_inductor.settings import get_settings
from avo_inductor.spec import HardwareKey

from search_fakes import HW, SPEC, FakeEvaluator

CAMPAIGN = """
[campaign]
name = "tiny"
[search]
generations = 3
population = 3
islands = 2
operators = ["structured", "agent"]
[[spec]]
batch = 2
q_heads = 4
kv_heads = 4
seq_len = 256
head_dim = 64
causal = true
"""


def _campaign(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CAMPAIGN)
    return path


def test_campaign_run_status_lineage(tmp_path: Path) -> None:
    events: list[SearchEvent] = []
    db = tmp_path / "search.db"
    opts = runner.RunOptions(campaign=str(_campaign(tmp_path)), db=str(db), generations=2)
    store = KernelStore(tmp_path / "store", shipped=False)
    outcome = runner.execute(opts, store=store, evaluator=FakeEvaluator(), sink=events.append, hardware=HW)
    # agent requested by the campaign, no ANTHROPIC_API_KEY: said once, structured carries on
    notes = [e.message for e in events if e.kind == "note" and "ANTHROPIC_API_KEY" in e.message]
    assert len(notes) == 1
    report = runner.status(db)
    (run,) = report.runs
    assert run.id == outcome.run_id and run.status == "finished" and run.generation == 3  # seeds + 2 generations
    assert run.config["search"]["population"] == 3 and run.config["options"]["generations"] == 2
    assert run.evaluated > 4 and run.budget_spent_s > 0
    (best,) = report.best
    assert best.spec_key == SPEC.cache_key() and best.speedup == outcome.best[SPEC.cache_key()][1]
    assert best.kernel_id == outcome.promoted[SPEC.cache_key()]  # stored in the real store
    steps = runner.lineage(best.kernel_id, db)
    assert steps[0].operator == "seed" and steps[0].parent_ids == ()
    assert steps[-1].candidate_id == best.candidate_id and steps[-1].score == best.speedup
    assert all(s.diff for s in steps)
    assert runner.lineage(SPEC.cache_key(), db) == steps
    with SearchDatabase(db) as d:
        assert d.promotions(outcome.run_id)[0]["kernel_id"] == best.kernel_id


def test_pending_queue_is_searched_and_cleared(tmp_path: Path) -> None:
    store = KernelStore(tmp_path / "store", shipped=False)
    store.enqueue_pending(SPEC, HW, origin="tests")
    other = HW.__class__("nvidia", "other-gpu", (8, 0), 108)
    store.enqueue_pending(SPEC, other, origin="tests")  # another GPU's miss: not ours to search
    opts = runner.RunOptions(pending=True, db=str(tmp_path / "s.db"), quick=True)
    outcome = runner.execute(opts, store=store, evaluator=FakeEvaluator(), hardware=HW)
    assert SPEC.cache_key() in outcome.promoted
    assert [e.hardware for e in store.pending()] == [other]
    with pytest.raises(runner.NothingToDo):
        runner.execute(opts, store=store, evaluator=FakeEvaluator(), hardware=HW)


def test_quick_and_explicit_options_precedence(tmp_path: Path) -> None:
    inputs = runner.Inputs((SPEC,), {}, {"generations": 9, "population": 7, "islands": 3}, {})
    cfg = runner.build_config(runner.RunOptions(campaign="x", quick=True, population=5), inputs, HW)
    assert (cfg.generations, cfg.population, cfg.islands, cfg.require_speedup) == (1, 5, 1, True)
    cpu = HW.__class__("cpu", "triton-interpreter", (0, 0), 0)
    assert not runner.build_config(runner.RunOptions(campaign="x"), inputs, cpu).require_speedup
    with pytest.raises(ValueError, match="exactly one of"):
        runner.RunOptions(pending=True, campaign="x")
    with pytest.raises(ValueError, match="unknown operator"):
        runner.RunOptions(pending=True, operators=("genetic",))


def _interrupted_run(tmp_path: Path, store: KernelStore, batches: int) -> Path:
    """A campaign run on the fake GPU HW, interrupted (Ctrl-C) after ``batches`` evaluated batches: its database."""
    class Interrupting(FakeEvaluator):
        def evaluate(self, candidates):  # type: ignore[no-untyped-def]
            if len(self.calls) == batches:
                raise KeyboardInterrupt
            return super().evaluate(candidates)

    db = tmp_path / "s.db"
    opts = runner.RunOptions(campaign=str(_campaign(tmp_path)), db=str(db), operators=("structured",))
    with pytest.raises(KeyboardInterrupt):
        runner.execute(opts, store=store, evaluator=Interrupting(), hardware=HW)
    return db


def test_resume_finishes_an_interrupted_run(tmp_path: Path) -> None:
    store = KernelStore(tmp_path / "store", shipped=False)
    db = _interrupted_run(tmp_path, store, batches=2)
    (run,) = runner.status(db).runs
    assert run.status == "interrupted" and run.pending > 0
    outcome = runner.resume("latest", db, store=store, evaluator=FakeEvaluator(), hardware=HW)
    (run,) = runner.status(db).runs
    assert outcome.run_id == run.id and run.status == "finished" and run.pending == 0 and run.generation == 4
    with pytest.raises(ValueError, match="no unfinished run"):
        runner.resume("latest", db, store=store, evaluator=FakeEvaluator(), hardware=HW)


def test_resuming_another_gpus_run_is_a_one_line_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run measured on one GPU, resumed from a machine of another kind (here: this CPU-only one): exit 1 and one
    line saying why, whether the run is named or found as `latest`; the run is left as it was."""
    db = _interrupted_run(tmp_path, KernelStore(tmp_path / "store", shipped=False), batches=1)
    (run,) = runner.status(db).runs
    if torch.cuda.is_available() and HardwareKey.current().slug == HW.slug:
        pytest.skip("this machine is the fake GPU")
    capsys.readouterr()
    assert main(["resume", "latest", "--db", str(db)]) == 1
    assert main(["resume", run.id, "--db", str(db)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "no unfinished run measured on" in err[0]
    assert f"run {run.id} was measured on {HW.slug}, this is " in err[1]
    (after,) = runner.status(db).runs
    assert (after.status, after.evaluated, after.pending) == (run.status, run.evaluated, run.pending)


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--campaign", str(tmp_path / "missing.toml"), "--db", str(tmp_path / "s.db")]) == 2
    assert main(["status", "--db", str(tmp_path / "none.db")]) == 1  # not found: 1; bad input (above): 2
    assert main(["lineage", "abc", "--db", str(tmp_path / "none.db")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "missing.toml: cannot read campaign file" in err[0] and "no search database" in err[1]


def test_ray_address_without_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    with pytest.raises(RuntimeError, match=r"pip install 'avo_inductor\[ray\]'"):
        runner.build_evaluator(runner.RunOptions(pending=True, ray_address="ray://head:10001"))


def test_gpus_with_ray_address_is_the_actor_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """--gpus N with --ray-address asks the cluster for N actors (it was silently ignored)."""
    from avo_inductor.search import distributed

    made: list[tuple[str, int | None]] = []

    class Recording:
        def __init__(self, address: str, actors: int | None = None, **kwargs: object) -> None:
            made.append((address, actors))

    monkeypatch.setattr(distributed, "RayEvaluator", Recording)
    runner.build_evaluator(runner.RunOptions(pending=True, ray_address="auto", gpus=3))
    runner.build_evaluator(runner.RunOptions(pending=True, ray_address="auto"))
    assert made == [("auto", 3), ("auto", None)]


def test_default_db_lives_next_to_the_store() -> None:
    assert runner.default_db_path() == get_settings().cache_dir / "search.db"


def test_model_factory_shapes_are_traced() -> None:
    (spec,) = runner.specs_from_model("search_fakes:tiny_sdpa_model")
    assert (spec.batch, spec.q_heads, spec.q_len, spec.head_dim, spec.causal) == (1, 4, 32, 16, True)
    with pytest.raises(ValueError, match=r"pkg\.module:factory"):
        runner.specs_from_model("search_fakes")
    with pytest.raises(ValueError, match="cannot load factory"):
        runner.specs_from_model("search_fakes:nope")


def test_agent_operator_is_built_when_a_key_is_set(tmp_path: Path) -> None:
    import dataclasses

    settings = dataclasses.replace(get_settings(), anthropic_api_key="sk-test")
    notes: list[str] = []
    with SearchDatabase(tmp_path / "s.db") as db:
        ops = runner.build_operators(("structured", "agent:0.5"), settings, FakeEvaluator(), HW, db, notes.append)
    assert [(op.name, w) for op, w in ops] == [("structured", 1.0), ("agent", 0.5)] and notes == []


_KILLED_CHILD = """
import sys, time
from pathlib import Path
sys.path[:0] = [{tests!r}]
from avo_inductor.cache.store import KernelStore
from avo_inductor.search import runner
from search_fakes import HW, FakeEvaluator

class Hanging(FakeEvaluator):
    def evaluate(self, candidates):
        if len(self.calls) == 2:  # the third batch is marked in flight in the database, then the process hangs
            Path({marker!r}).write_text("in flight")
            time.sleep(600)
        return super().evaluate(candidates)

opts = runner.RunOptions(campaign={campaign!r}, db={db!r}, operators=("structured",), budget_minutes=30.0)
runner.execute(opts, store=KernelStore(Path({store!r}), shipped=False), evaluator=Hanging(), hardware=HW)
"""


def test_resume_after_sigkill_with_a_time_budget_works_first_time(tmp_path: Path) -> None:
    """Regression: SIGKILLed mid-batch (candidates left "evaluating") in a run with a wall-clock budget, the
    first ``resume`` raised AttributeError (the re-queue note read the budget before the segment had started);
    only a second resume, with nothing left to re-queue, worked."""
    import os
    import signal
    import subprocess
    import sys
    import time

    db, marker, store_dir = tmp_path / "s.db", tmp_path / "in-flight", tmp_path / "store"
    script = _KILLED_CHILD.format(tests=str(Path(__file__).parent), marker=str(marker), db=str(db),
                                  campaign=str(_campaign(tmp_path)), store=str(store_dir))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else "child exited"
            assert time.monotonic() < deadline, "the child never reached its third batch"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (run,) = runner.status(db).runs
    assert run.status == "running" and run.pending > 0  # killed: no handler ran, candidates left in flight
    events: list[SearchEvent] = []
    store = KernelStore(store_dir, shipped=False)
    outcome = runner.resume("latest", db, store=store, evaluator=FakeEvaluator(), hardware=HW, sink=events.append)
    (run,) = runner.status(db).runs
    assert outcome.run_id == run.id and run.status == "finished" and run.pending == 0 and run.generation == 4
    (note,) = [e for e in events if e.kind == "note" and "re-queued" in e.message]
    assert isinstance(note.generation, int) and note.generation <= 3  # the note names the generation it re-queued in
    assert note.budget_left_s is not None and 0 < note.budget_left_s <= 30 * 60


_BAD_NUMBERS = {
    "--generations": ["-1", "1.5", "nan", "x", str(10**30)],
    "--budget-minutes": ["nan", "inf", "-5", "0", "1e999", "soon"],
    "--population": ["0", "-2", "nan", "2.5"],
    "--islands": ["0", "-1", "inf"],
    "--seed": ["-1", "nan", "1e3"],
    "--gpus": ["0", "-1", "nan", "1.0"],
    "--max-tokens": ["0", "-100", "nan", "1e6"],
    "--max-dollars": ["nan", "inf", "-0.01", "-inf", "lots"],
    "--slice-minutes": ["nan", "inf", "0", "-1"],
}


@pytest.mark.parametrize("flag,bad", [(f, b) for f, values in _BAD_NUMBERS.items() for b in values])
def test_numeric_flags_refuse_nan_inf_negative(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str,
                                               bad: str) -> None:
    """Every numeric flag is parsed by the RunOptions rule: a usage error (exit 2) naming the flag, no run."""
    db = tmp_path / "s.db"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--campaign", str(_campaign(tmp_path)), "--db", str(db), f"{flag}={bad}"])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not db.exists()


@pytest.mark.parametrize("field,bad", [("budget_minutes", float("nan")), ("budget_minutes", float("inf")),
                                       ("max_dollars", float("nan")), ("max_dollars", -1.0), ("generations", -1),
                                       ("population", 0), ("gpus", 0), ("max_tokens", 0), ("seed", True)])
def test_run_options_refuse_bad_numbers(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=field):
        runner.RunOptions(campaign="x.toml", **{field: bad})
    with pytest.raises(ValueError, match="weight"):
        runner.RunOptions(campaign="x.toml", operators=("structured:nan",))


@pytest.mark.parametrize("value", ["nan", "inf", "-3.0", "0"])
def test_campaign_budget_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    """TOML has nan/inf literals: a campaign's budget_minutes = nan would end (or never end) the run."""
    path = tmp_path / "c.toml"
    path.write_text(CAMPAIGN.replace("generations = 3", f"generations = 3\nbudget_minutes = {value}"))
    opts = runner.RunOptions(campaign=str(path), db=str(tmp_path / "s.db"))
    inputs = runner.resolve_inputs(opts, None, HW)
    with pytest.raises(ValueError, match="budget_minutes"):
        runner.build_config(opts, inputs, HW)
    with pytest.raises(ValueError, match="slice_minutes"):
        runner.execute(opts, store=KernelStore(tmp_path / "store", shipped=False), evaluator=FakeEvaluator(),
                       hardware=HW, inputs=inputs, slice_minutes=float("nan"))
