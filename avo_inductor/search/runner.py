"""Wiring for ``python -m avo_inductor.search``: options → specs, config, operators, evaluator, store → engine.

The CLI parses arguments into RunOptions and calls these functions; tests call them directly and assert on
the returned data. Options are stored with the run so ``resume RUN_ID`` rebuilds the same search.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from ..parsing import bounded_int, finite_float
from ..settings import Settings, get_settings
from ..spec import AttentionSpec, HardwareKey
from .budget import Budget
from .campaign import load_campaign
from .database import BestEntry, LineageStep, RunInfo, SearchDatabase
from .engine import SearchConfig, SearchEngine, SearchEvent, SearchOutcome, measured_gpu
from .operators import StructuredOperator
from .types import Evaluator, VariationOperator

OPERATOR_WEIGHTS = {"structured": 1.0, "agent": 0.25}  # agent sessions cost minutes and dollars each
QUICK: dict[str, Any] = {"generations": 1, "population": 1, "islands": 1, "seed_variants": 1,
                         "budget_minutes": 15.0, "operators": ("structured",)}
# Lower bounds of the integer run options (CLI flags and campaign [search] values alike).
INT_MINIMUMS = {"generations": 0, "population": 1, "islands": 1, "seed": 0, "gpus": 1, "max_tokens": 1,
                "seed_variants": 0, "migration_interval": 0, "eval_batch": 0}


def positive_minutes(name: str, value: Any) -> float:
    """A finite number of minutes > 0 (NaN would end a run at once or never; inf is no budget at all)."""
    minutes = finite_float(name, value, minimum=0.0)
    if minutes <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    return minutes


def check_run_number(name: str, value: Any) -> int | float:
    """Validate one numeric run option by name; ValueError naming it and the offending value."""
    if name in ("budget_minutes", "slice_minutes"):
        return positive_minutes(name, value)
    if name == "max_dollars":
        return finite_float(name, value, minimum=0.0)
    return bounded_int(name, value, minimum=INT_MINIMUMS[name])


class NothingToDo(Exception):
    """The chosen input holds no spec (empty pending queue, a model without attention)."""


@dataclass(frozen=True)
class RunOptions:
    """What ``run`` was asked for; None means "not given" (campaign [search] values, then defaults apply)."""

    pending: bool = False
    campaign: str | None = None
    model: str | None = None
    specs: tuple[str, ...] | None = None  # spec texts (AttentionSpec.to_text), from the Python API
    train: bool | None = None  # --model: training specs (True), inference (False), the model's own mode (None)
    generations: int | None = None
    budget_minutes: float | None = None
    population: int | None = None
    islands: int | None = None
    operators: tuple[str, ...] | None = None
    seed: int | None = None
    gpus: int | None = None
    agent_model: str | None = None
    max_tokens: int | None = None
    max_dollars: float | None = None
    ray_address: str | None = None
    db: str | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        if sum((self.pending, self.campaign is not None, self.model is not None, self.specs is not None)) != 1:
            raise ValueError("give exactly one of --pending, --campaign FILE, --model MODULE:FACTORY (or specs)")
        if self.specs is not None:
            object.__setattr__(self, "specs", tuple(self.specs))
            if not self.specs:
                raise ValueError("specs is empty: give at least one attention spec")
        for name in ("generations", "budget_minutes", "population", "islands", "seed", "gpus", "max_tokens",
                     "max_dollars"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_run_number(name, getattr(self, name)))
        if self.operators is not None:
            object.__setattr__(self, "operators", tuple(self.operators))
            for op in self.operators:
                name, _, weight = op.partition(":")
                if name not in OPERATOR_WEIGHTS:
                    raise ValueError(f"unknown operator {name!r}; valid: {', '.join(OPERATOR_WEIGHTS)}")
                if weight:
                    finite_float(f"operator weight in {op!r}", weight, minimum=0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunOptions:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class Inputs:
    specs: tuple[AttentionSpec, ...]
    labels: dict[str, str]  # spec key -> display label
    search: dict[str, Any]  # campaign [search] table
    pending_keys: dict[str, str]  # spec key -> store pending key


def default_db_path(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).cache_dir / "search.db"


def specs_from_model(target: str, train: bool | None = None,
                     notify: Callable[[str], None] | None = None) -> list[AttentionSpec]:
    """Trace ``pkg.module:factory`` (factory() -> (model, example_inputs tuple)) with a collecting backend
    and return the distinct specs ``detect.match.find_attention_sites`` reports. ``train`` as in trace_specs."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--model expects pkg.module:factory; got {target!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--model {target}: cannot load factory: {exc}") from None
    made = factory()
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], tuple)):
        raise ValueError(f"--model {target}: factory must return (model, example_inputs tuple); "
                         f"got {type(made).__name__}")
    model, example_inputs = made
    return trace_specs(model, example_inputs, train=train, notify=notify, name=f"--model {target}")


def trace_specs(model: Any, example_inputs: tuple[Any, ...], *, train: bool | None = None,
                notify: Callable[[str], None] | None = None, name: str = "model") -> list[AttentionSpec]:
    """The distinct attention specs of ``model(*example_inputs)``. Traced in eval() without grad (inference specs)
    unless ``train`` is True or, with ``train`` None, the module is in train mode: a training spec also needs the
    backward kernel and costs about 3x the search. ``notify`` is told which mode was used, why, and what it found.
    The module's own train/eval flag is restored afterwards."""
    import torch

    from ..detect.match import find_attention_sites

    in_train = bool(getattr(model, "training", False))
    training = in_train if train is None else train
    flag = "--train" if train else "--eval"
    why = f"the model is in {'train' if in_train else 'eval'}()" if train is None else flag
    found: dict[str, AttentionSpec] = {}

    def collect(gm: Any, _inputs: Any) -> Any:
        for site in find_attention_sites(gm):
            spec = getattr(site, "spec", None)  # SkippedSite has none
            if spec is not None:
                found.setdefault(spec.cache_key(), spec)
        return gm.forward

    torch._dynamo.reset()
    try:
        if hasattr(model, "train"):
            model.train(training)
        with torch.set_grad_enabled(training):
            torch.compile(model, backend=collect)(*example_inputs)
    finally:
        torch._dynamo.reset()
        if hasattr(model, "train"):
            model.train(in_train)
    if notify is not None:
        n_train = sum(s.needs_grad for s in found.values())
        notify(f"{name}: traced in {'train' if training else 'eval'}() mode with grad {'on' if training else 'off'} "
               f"({why}): {len(found) - n_train} inference and {n_train} training spec(s); "
               f"{'--eval' if training else '--train'} traces the other way")
    return list(found.values())


def resolve_inputs(options: RunOptions, store: Any, hardware: HardwareKey,
                   notify: Callable[[str], None] | None = None) -> Inputs:
    """The specs to search and where they came from; raises NothingToDo when there are none."""
    if options.specs is not None:
        return Inputs(tuple(AttentionSpec.from_text(t) for t in options.specs), {}, {}, {})
    if options.campaign is not None:
        camp = load_campaign(options.campaign)
        labels = {e.spec.cache_key(): e.label for e in camp.entries if e.label}
        return Inputs(camp.specs, labels, camp.search, {})
    if options.model is not None:
        specs = specs_from_model(options.model, options.train, notify)
        if not specs:
            raise NothingToDo(f"--model {options.model}: no attention site the detector understands")
        return Inputs(tuple(specs), {}, {}, {})
    entries = [e for e in store.pending() if options.ray_address or e.hardware.slug == hardware.slug]
    if not entries:
        raise NothingToDo(f"the pending queue of {store.directory} has no spec for {hardware.slug}; nothing to search")
    by_key: dict[str, AttentionSpec] = {}
    keys: dict[str, str] = {}
    for e in entries:
        by_key.setdefault(e.spec.cache_key(), e.spec)
        keys[e.spec.cache_key()] = e.key
    labels = {k: f"{by_key[k].short()} \N{MULTIPLICATION SIGN}{e.count}" for e in entries for k in [e.spec.cache_key()]}
    return Inputs(tuple(by_key.values()), labels, {}, keys)


def build_config(options: RunOptions, inputs: Inputs, hardware: HardwareKey) -> SearchConfig:
    """Explicit options win over --quick, which wins over the campaign's [search] table, then defaults."""
    merged: dict[str, Any] = dict(inputs.search)
    if options.quick:
        merged.update(QUICK)
    merged.update({k: v for k, v in options.to_dict().items() if v is not None and k in
                   ("generations", "budget_minutes", "population", "islands", "seed")})
    for name in ("generations", "budget_minutes", "population", "islands", "seed", "seed_variants",
                 "migration_interval", "eval_batch"):
        if merged.get(name) is not None:  # campaign TOML allows nan/inf and negatives: refuse them here too
            merged[name] = check_run_number(name, merged[name])
    kwargs: dict[str, Any] = {k: merged[k] for k in ("generations", "population", "islands", "seed", "seed_variants",
                                                     "migration_interval", "eval_batch") if k in merged}
    if merged.get("seed_genomes"):
        kwargs["seed_genomes"] = tuple(merged["seed_genomes"])
    if merged.get("budget_minutes") is not None:
        kwargs["budget_s"] = float(merged["budget_minutes"]) * 60.0
    # The CPU interpreter's timings say nothing about a GPU: there a verified winner is stored without a speedup.
    kwargs["require_speedup"] = hardware.vendor != "cpu" or options.ray_address is not None
    return SearchConfig(specs=inputs.specs, **kwargs)


def operator_names(options: RunOptions, inputs: Inputs) -> tuple[str, ...]:
    if options.operators is not None:
        return options.operators
    if options.quick:
        return tuple(QUICK["operators"])
    return tuple(inputs.search.get("operators", ("structured", "agent")))


def build_operators(names: tuple[str, ...], settings: Settings, evaluator: Evaluator, hardware: HardwareKey,
                    db: SearchDatabase, notify: Callable[[str], None],
                    spent: tuple[int, float] = (0, 0.0)) -> list[tuple[VariationOperator, float]]:
    """(operator, weight) pairs; "name:weight" overrides the default weight. A requested agent without an
    API key is announced once through ``notify`` and left out. ``spent`` (tokens, dollars) already charged to the
    run: a resumed run's agent budget continues from there instead of starting again from zero."""
    ops: list[tuple[VariationOperator, float]] = []
    for item in names:
        name, _, raw_weight = item.partition(":")
        weight = float(raw_weight) if raw_weight else OPERATOR_WEIGHTS[name]
        if name == "structured":
            ops.append((StructuredOperator(hardware=hardware), weight))
            continue
        from .agent import AgentOperator, agent_available

        usable, why = agent_available(settings)
        if not usable:
            notify(why)
            continue

        def client_factory() -> Any:
            import anthropic

            return anthropic.Anthropic(api_key=settings.anthropic_api_key)

        def history(cand: Any) -> list[LineageStep]:
            try:
                return db.lineage(cand.id)
            except ValueError:
                return []

        budget = Budget(settings.agent_max_tokens, settings.agent_max_dollars, tokens_used=spent[0],
                        dollars_used=spent[1])
        ops.append((AgentOperator(client_factory, settings, evaluator, hardware=hardware, history=history,
                                  budget=budget), weight))
    if not ops:
        ops.append((StructuredOperator(hardware=hardware), OPERATOR_WEIGHTS["structured"]))
    return ops


def build_evaluator(options: RunOptions) -> Evaluator:
    """Sandboxed workers, one per local GPU (``--gpus N``: the first N; CPU: one interpreter worker), or
    Ray actors pinned one per GPU when ``--ray-address`` is given (``--gpus N``: N actors, default one per GPU
    of the cluster; more than the cluster has is refused there)."""
    if options.ray_address:
        from .distributed import RayEvaluator

        return RayEvaluator(options.ray_address, actors=options.gpus, quick=options.quick)
    from .evaluate import SandboxedEvaluator
    from ..check.sandbox import default_devices

    devices = default_devices()
    if options.gpus is not None and devices == ["cpu"]:
        raise ValueError(f"--gpus {options.gpus}: this machine has 0 CUDA GPUs; leave --gpus out to search on the "
                         "CPU (one Triton-interpreter worker)")
    if options.gpus is not None:
        if not 1 <= options.gpus <= len(devices):
            raise ValueError(f"--gpus {options.gpus}: this machine has {len(devices)} GPU(s)")
        devices = devices[: options.gpus]
    return SandboxedEvaluator(devices=devices, quick=options.quick)


def _agent_settings(options: RunOptions, inputs_search: dict[str, Any], settings: Settings) -> Settings:
    changes: dict[str, Any] = {
        "agent_model": options.agent_model or inputs_search.get("agent_model"),
        "agent_max_tokens": options.max_tokens or inputs_search.get("max_tokens"),
        "agent_max_dollars": options.max_dollars if options.max_dollars is not None
        else inputs_search.get("max_dollars"),
    }
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


def execute(options: RunOptions, *, run_id: str | None = None, inputs: Inputs | None = None,
            config: SearchConfig | None = None, settings: Settings | None = None, store: Any = None,
            evaluator: Evaluator | None = None, sink: Callable[[SearchEvent], None] | None = None,
            hardware: HardwareKey | None = None, slice_minutes: float | None = None) -> SearchOutcome:
    """Run (or with ``run_id``, resume) a search; clears the pending entries of specs that got a record.
    ``slice_minutes``: stop this call after that long, promote the best so far and leave the run resumable."""
    if slice_minutes is not None:
        slice_minutes = positive_minutes("slice_minutes", slice_minutes)
    settings = settings or get_settings()
    hardware = hardware or HardwareKey.current()
    if store is None:
        from ..cache.store import KernelStore
        store = KernelStore.from_settings(settings)
    events: list[SearchEvent] = []
    emit = sink or events.append
    inputs = inputs or resolve_inputs(options, store, hardware,
                                      lambda message: emit(SearchEvent("note", run_id or "", 0, message)))
    config = config or build_config(options, inputs, hardware)
    db = SearchDatabase(options.db or default_db_path(settings))
    owned = evaluator is None
    evaluator = evaluator or build_evaluator(options)
    try:
        def notify(message: str) -> None:
            emit(SearchEvent("note", run_id or "", 0, message))

        spent = (0, 0.0)
        if run_id:
            info = db.get_run(run_id)
            spent = (info.tokens, info.dollars)
        ops = build_operators(operator_names(options, inputs), _agent_settings(options, inputs.search, settings),
                              evaluator, hardware, db, notify, spent)
        engine = SearchEngine(db, evaluator, ops, config, store=store, hardware=hardware, on_event=emit,
                              measures_locally=not options.ray_address)
        meta = {"options": options.to_dict(), "labels": inputs.labels, "pending_keys": inputs.pending_keys,
                "campaign_search": inputs.search}
        outcome = engine.run(run_id=run_id, meta=None if run_id else meta,
                             slice_s=None if slice_minutes is None else slice_minutes * 60.0)
        done = [inputs.pending_keys[k] for k in outcome.promoted if k in inputs.pending_keys]
        if done:
            store.clear_pending(done)
        return outcome
    finally:
        db.close()
        if owned:
            evaluator.close()


def latest_unfinished(db: SearchDatabase, hardware: HardwareKey | None = None) -> str:
    """The most recently started run that has not finished (what a campaign sliced over GPU leases continues);
    with ``hardware``, the newest of those measured on that GPU or not measured yet (a run is resumed on its own
    kind of GPU only, so a database may hold one open run per kind; ``measured_gpu``: what the run recorded, or
    what its results report for a run from before runs recorded their GPU)."""
    open_runs = sorted((r for r in db.runs() if r.status != "finished"), key=lambda r: r.started)
    if not open_runs:
        raise ValueError("no unfinished run in the database: every run has finished (start a new one with `run`)")
    if hardware is not None:
        mine = [r for r in open_runs
                if measured_gpu(r.config, (res for _, res in db.evaluated(r.id))) in (None, hardware.slug)]
        if not mine:
            raise ValueError(f"no unfinished run measured on {hardware.slug} in the database (its open runs were "
                             f"measured on other GPUs; start a new one here with `run`)")
        open_runs = mine
    return open_runs[-1].id


def resume(run_id: str, db_path: str | Path | None = None, **kwargs: Any) -> SearchOutcome:
    """Continue ``run_id`` ("latest": the newest unfinished run) with the options, specs and config it was
    started with."""
    path = _existing(db_path or default_db_path(kwargs.get("settings")))
    with SearchDatabase(path) as db:
        if run_id == "latest":
            run_id = latest_unfinished(db, kwargs.get("hardware") or HardwareKey.current())
        info = db.get_run(run_id)
    if info.status == "finished":
        raise ValueError(f"run {run_id} already finished; start a new run (the database keeps its population)")
    options = dataclasses.replace(RunOptions.from_dict(info.config["options"]), db=str(path))
    config = SearchConfig.from_dict(info.config["search"])
    inputs = Inputs(config.specs, info.config.get("labels", {}), info.config.get("campaign_search", {}),
                    info.config.get("pending_keys", {}))
    return execute(options, run_id=run_id, inputs=inputs, config=config, **kwargs)


@dataclass(frozen=True)
class StatusReport:
    runs: list[RunInfo]
    best: list[BestEntry]


def _existing(db_path: str | Path | None) -> Path:
    path = Path(db_path) if db_path else default_db_path()
    if not path.exists():
        raise ValueError(f"no search database at {path} (run a search first, or pass --db PATH)")
    return path


def status(db_path: str | Path | None = None) -> StatusReport:
    """Runs (budget spent, evaluated/failed) and the best speedup per spec over all runs."""
    with SearchDatabase(_existing(db_path)) as db:
        return StatusReport(db.runs(), db.bests())


def lineage(ref: str, db_path: str | Path | None = None) -> list[LineageStep]:
    """Ancestry (root first) of a kernel id, candidate id or spec key."""
    with SearchDatabase(_existing(db_path)) as db:
        return db.lineage(ref)
