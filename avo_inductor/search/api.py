"""The search from Python: ``run`` / ``resume`` a search, ``status`` of the runs, ``lineage`` of a kernel, as data.

A thin layer over ``runner`` (which wires options to the engine) and the population database: these functions
return frozen dataclasses with ``to_dict`` that the CLI prints as text or JSON, so the two cannot disagree.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import Settings, get_settings
from ..spec import AttentionSpec, HardwareKey
from . import runner
from .database import LineageStep, RunInfo, SearchDatabase
from .engine import SearchConfig, SearchEvent, SearchOutcome, measured_gpu
from .errors import SearchNotFound, SearchRefused, require_database
from .types import Candidate, EvalResult, Evaluator

__all__ = ["Lineage", "NothingToDo", "RunResult", "RunStatus", "SearchNotFound", "SearchRefused", "SpecResult",
           "lineage", "resume", "run", "status"]

NothingToDo = runner.NothingToDo




@dataclass(frozen=True)
class SpecResult:
    """One spec's outcome in one run: its best passing candidate, and the kernel promoted to the store (if any).

    ``spec`` is the spec text (``AttentionSpec.from_text`` reads it back); ``best_speedup`` is the screening score
    (speedup over the best built-in backend timed in the same worker; 0 or None on the CPU interpreter)."""

    spec_key: str
    spec: str
    label: str = ""
    best_candidate_id: str | None = None
    best_speedup: float | None = None
    kernel_id: str | None = None
    rejected: str | None = None  # why the best was not promoted

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunResult:
    """What ``run`` / ``resume`` did: the run id (for ``resume`` and ``lineage``), why it stopped, per-spec results."""

    run_id: str
    stop_reason: str
    db: str
    specs: tuple[SpecResult, ...]

    @property
    def promoted(self) -> dict[str, str]:
        """spec key -> kernel id of every spec whose winner was stored in this call."""
        return {s.spec_key: s.kernel_id for s in self.specs if s.kernel_id}

    @property
    def best_speedups(self) -> dict[str, float]:
        """spec key -> best screening speedup found (specs with no passing candidate are left out)."""
        return {s.spec_key: s.best_speedup for s in self.specs if s.best_speedup is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "stop_reason": self.stop_reason, "db": self.db,
                "specs": [s.to_dict() for s in self.specs]}


@dataclass(frozen=True)
class RunStatus:
    """One run of the database: progress, spend, and the best result per spec within this run."""

    run_id: str
    status: str  # running | interrupted | paused | finished (as the engine left it)
    source: str  # "campaign FILE", "model MOD:FACTORY", "pending", "specs"
    started: float  # unix time
    finished: float | None
    generation: int
    evaluated: int
    failed: int
    pending: int
    budget_spent_s: float
    dollars: float
    tokens: int
    specs: tuple[SpecResult, ...]
    gpu: str | None = None  # the GPU the run is measured on (hardware slug); a run is resumed on that kind only

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["specs"] = [s.to_dict() for s in self.specs]
        return out


@dataclass(frozen=True)
class Lineage:
    """Ancestry of a kernel id, candidate id or spec key (its best candidate): root (a seed) first."""

    ref: str
    run_id: str
    steps: tuple[LineageStep, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "run_id": self.run_id,
                "steps": [{**dataclasses.asdict(s), "parent_ids": list(s.parent_ids)} for s in self.steps]}


def _db_path(db: str | Path | None, settings: Settings | None = None) -> Path:
    return Path(db) if db is not None else runner.default_db_path(settings)


def writable_db(db: str | Path | None, settings: Settings | None = None) -> Path:
    """The database path of a new run, its folder created; RuntimeError naming it (and the fix) if it can't be."""
    path = _db_path(db, settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(f"{path.parent} is read-only")
    except OSError as exc:
        raise RuntimeError(f"cannot write the search database {path} ({exc.strerror or exc}); set AVO_CACHE_DIR "
                           "to a writable folder or pass --db PATH") from None
    return path


def _existing_db(db: str | Path | None) -> Path:
    return require_database(_db_path(db))


def _source(options: dict[str, Any]) -> str:
    if options.get("campaign"):
        return f"campaign {options['campaign']}"
    if options.get("model"):
        return f"model {options['model']}"
    return "specs" if options.get("specs") else "pending"


def _spec_results(db: SearchDatabase, info: RunInfo, outcome: SearchOutcome | None = None,
                  evaluated: Sequence[tuple[Candidate, EvalResult]] | None = None) -> tuple[SpecResult, ...]:
    """Per spec of the run, in its config order: the best passing candidate of this run and its promotion
    (``evaluated``: the run's results when the caller has read them already)."""
    specs = SearchConfig.from_dict(info.config["search"]).specs if "search" in info.config else ()
    labels: dict[str, str] = info.config.get("labels", {})
    best: dict[str, tuple[str, float]] = {}
    if outcome is not None:
        best = dict(outcome.best)
    else:
        for cand, res in db.evaluated(info.id) if evaluated is None else evaluated:
            key = cand.spec.cache_key()
            if res.ok and (key not in best or res.score > best[key][1]):
                best[key] = (cand.id, res.score)
    promoted = {p["spec_key"]: p["kernel_id"] for p in db.promotions(info.id)}
    if outcome is not None:
        promoted.update(outcome.promoted)
    rejected = outcome.rejected if outcome is not None else {}
    out = []
    for spec in specs:
        key = spec.cache_key()
        cid, score = best.get(key, (None, None))
        out.append(SpecResult(key, spec.to_text(), labels.get(key, ""), cid, score, promoted.get(key),
                              rejected.get(key)))
    return tuple(out)


def _result(outcome: SearchOutcome, db_path: Path) -> RunResult:
    with SearchDatabase(db_path) as db:
        info = db.get_run(outcome.run_id)
        return RunResult(outcome.run_id, outcome.stop_reason, str(db_path), _spec_results(db, info, outcome))


def _check_agent(operators: Sequence[str] | None, settings: Settings) -> None:
    """An agent asked for by name must be usable: a silent fall back to structured operators wastes the run."""
    if operators is None or not any(op.partition(":")[0] == "agent" for op in operators):
        return
    from .agent import agent_available

    usable, why = agent_available(settings)
    if not settings.anthropic_api_key:
        why = "needs ANTHROPIC_API_KEY: export ANTHROPIC_API_KEY=sk-ant-... first"
    if not usable:
        raise ValueError(f"--operators agent {why} (or search with --operators structured)")


def run(campaign: str | Path | None = None, *, specs: Sequence[AttentionSpec | str] | None = None,
        model: str | tuple[Any, tuple[Any, ...]] | None = None, pending: bool = False,
        budget_minutes: float | None = None, db: str | Path | None = None, operators: Sequence[str] | None = None,
        generations: int | None = None, population: int | None = None, islands: int | None = None,
        seed: int | None = None, gpus: int | None = None, train: bool | None = None, quick: bool = False,
        agent_model: str | None = None, max_tokens: int | None = None, max_dollars: float | None = None,
        ray_address: str | None = None, slice_minutes: float | None = None,
        progress: Callable[[SearchEvent], None] | None = None, settings: Settings | None = None,
        store: Any = None, evaluator: Evaluator | None = None, hardware: HardwareKey | None = None) -> RunResult:
    """Search kernels for one input: a ``campaign`` TOML file, ``specs`` (AttentionSpec or spec text), a ``model``
    (``"pkg.module:factory"`` or ``(module, example_inputs)``), or the ``pending`` queue; winners go to the store.

    ``model`` is traced for inference specs unless ``train`` is True or (``train`` None) the module is in train
    mode; a progress "note" says which. ``operators`` names (``"structured"``, ``"agent:0.5"``) must be usable:
    ``"agent"`` without ANTHROPIC_API_KEY is a ValueError. ``progress`` receives every SearchEvent (default: none).
    ``store`` / ``evaluator`` / ``hardware`` are plug points (defaults: the configured store, sandboxed workers on
    the local GPUs, this machine). Raises ValueError for bad input, NothingToDo when the input holds no spec.
    """
    settings = settings or get_settings()
    _check_agent(operators, settings)
    given = [name for name, value in (("campaign", campaign), ("specs", specs), ("model", model)) if value is not None]
    if len(given) + bool(pending) != 1:
        given += ["pending"] if pending else []
        raise ValueError(f"give exactly one of campaign, specs, model or pending=True; got {given or 'none'}")
    if train is not None and model is None:
        raise ValueError("train / --train / --eval choose how a model is traced; they need model / --model")
    emit = progress or (lambda _event: None)
    model_target: str | None = None
    if isinstance(model, tuple):  # a live module: trace it here, then search its specs like a spec list
        module, example_inputs = model
        specs = runner.trace_specs(module, tuple(example_inputs), train=train, name="model",
                                   notify=lambda message: emit(SearchEvent("note", "", 0, message)))
        if not specs:
            raise NothingToDo("model: no attention site the detector understands")
    elif model is not None:
        model_target = str(model)
    texts = None if specs is None else tuple(s.to_text() if isinstance(s, AttentionSpec)
                                             else AttentionSpec.from_text(s).to_text() for s in specs)
    db_path = writable_db(db, settings)
    options = runner.RunOptions(
        pending=pending, campaign=None if campaign is None else str(campaign), model=model_target, specs=texts,
        train=train, generations=generations, budget_minutes=budget_minutes, population=population,
        islands=islands, operators=None if operators is None else tuple(operators), seed=seed, gpus=gpus,
        agent_model=agent_model, max_tokens=max_tokens, max_dollars=max_dollars, ray_address=ray_address,
        db=str(db_path), quick=quick)
    outcome = runner.execute(options, sink=emit, slice_minutes=slice_minutes, settings=settings, store=store,
                             evaluator=evaluator, hardware=hardware)
    return _result(outcome, db_path)


def resume(run_id: str = "latest", *, db: str | Path | None = None, slice_minutes: float | None = None,
           progress: Callable[[SearchEvent], None] | None = None, settings: Settings | None = None,
           store: Any = None, evaluator: Evaluator | None = None, hardware: HardwareKey | None = None) -> RunResult:
    """Continue ``run_id`` ("latest": the newest unfinished run) with the options it was started with.
    SearchNotFound without a database or run of that id; SearchRefused when there is nothing to continue."""
    path = _existing_db(db)
    with SearchDatabase(path) as database:
        known = {r.id: r for r in database.runs()}
    if run_id != "latest" and run_id not in known:
        raise SearchNotFound(f"no run {run_id!r} in {path}; recent runs: {sorted(known)[-5:] or 'none'}")
    try:
        outcome = runner.resume(run_id, path, sink=progress or (lambda _event: None), slice_minutes=slice_minutes,
                                settings=settings, store=store, evaluator=evaluator, hardware=hardware)
    except ValueError as exc:  # finished, or no unfinished run: the request is refused, not malformed
        raise SearchRefused(str(exc)) from None
    return _result(outcome, path)


def status(db: str | Path | None = None) -> list[RunStatus]:
    """Every run in the database (default ``<AVO_CACHE_DIR>/search.db``), oldest first."""
    with SearchDatabase(_existing_db(db)) as database:
        out = []
        for r in database.runs():
            evaluated = database.evaluated(r.id)  # read once: the best per spec and the GPU both come from it
            out.append(RunStatus(r.id, r.status, _source(r.config.get("options", {})), r.started, r.finished,
                                 r.generation, r.evaluated, r.failed, r.pending, r.budget_spent_s, r.dollars, r.tokens,
                                 _spec_results(database, r, evaluated=evaluated),
                                 measured_gpu(r.config, (res for _, res in evaluated))))
        return out


def lineage(ref: str, db: str | Path | None = None) -> Lineage:
    """How ``ref`` (a kernel id, candidate id or spec key) was found: its first-parent ancestry, root first."""
    with SearchDatabase(_existing_db(db)) as database:
        try:
            steps = database.lineage(ref)
        except ValueError as exc:
            raise SearchNotFound(str(exc)) from None
    return Lineage(ref, steps[-1].run_id if steps else "", tuple(steps))
