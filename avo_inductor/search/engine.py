"""The evolutionary loop: seed → (select → propose → evaluate → record → archive) per generation → promote.

No I/O of its own: the database, evaluator, operators and store are handed in, progress goes to a callback.
Every step is committed to the database before the next, so ``SearchEngine.run(run_id=...)`` resumes a
killed run from its last committed state (in-flight candidates are re-queued and evaluated again).
"""
from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..artifact import KernelGenome
from ..spec import AttentionSpec, HardwareKey, SoftwareKey, stable_hash, store_key
from . import population as pop
from .database import PENDING, SearchDatabase
from .errors import SearchRefused
from .operators import StructuredOperator, candidate_id, content_hash
from .promotion import build_record, promotion_decision, promotion_eval_batch
from .types import Candidate, EvalResult, Evaluator, VariationOperator


@dataclass(frozen=True)
class SearchConfig:
    """What to search and how hard. ``population``: children per island per generation.
    ``eval_batch``: candidates per evaluator call (0 = one per evaluation device); smaller batches lose less on a kill.
    ``require_speedup`` False stores any winner that passes re-evaluation (CPU interpreter runs).
    ``seed_genomes``: genome fields applied over each spec's default genome as extra seeds (campaign knowledge,
    e.g. known-good Hopper tiles), clamped to what each spec allows."""

    specs: tuple[AttentionSpec, ...]
    generations: int = 8
    budget_s: float | None = None
    population: int = 6
    islands: int = 2
    migration_interval: int = 2
    migrants: int = 1
    seed: int = 0
    seed_variants: int = 3
    exploit_ratio: float = 0.7
    top_k: int = 4
    eval_batch: int = 0
    promote: bool = True
    require_speedup: bool = True
    min_gain: float = 0.0
    seed_genomes: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "specs", tuple(self.specs))
        object.__setattr__(self, "seed_genomes", tuple(dict(g) for g in self.seed_genomes))
        if not self.specs:
            raise ValueError("SearchConfig.specs is empty: nothing to search")
        for name in ("generations", "population", "islands", "seed_variants", "eval_batch", "migration_interval"):
            if getattr(self, name) < 0 or (name in ("population", "islands") and getattr(self, name) < 1):
                raise ValueError(f"SearchConfig.{name} out of range: {getattr(self, name)}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError(f"SearchConfig.budget_s must be positive or None; got {self.budget_s}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["specs"] = [s.to_dict() for s in self.specs]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["specs"] = tuple(AttentionSpec.from_dict(s) for s in data["specs"])
        return cls(**kwargs)


@dataclass(frozen=True)
class SearchEvent:
    """Progress for displays and the JSONL log. kind: run_started | generation | evaluated | migration |
    promotion | note | run_finished. ``best``: spec key -> best speedup so far."""

    kind: str
    run_id: str
    generation: int
    message: str = ""
    evaluated: int = 0
    failed: int = 0
    best: dict[str, float] = field(default_factory=dict)
    budget_left_s: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchOutcome:
    run_id: str
    stop_reason: str
    best: dict[str, tuple[str, float]]  # spec key -> (candidate id, score)
    promoted: dict[str, str]  # spec key -> kernel id
    rejected: dict[str, str]  # spec key -> why not promoted


# Below this screening speedup a spec's best is not re-measured for promotion (it needs > 1 + spread to pass).
SCREEN_FLOOR = 0.97


def _round_robin_by_spec(candidates: Sequence[Candidate]) -> list[Candidate]:
    """One candidate of each spec in turn: a batch then spans several specs, so parallel workers each keep to
    their own specs (and their cached baselines) instead of all timing the same spec's baselines at once."""
    by_spec: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_spec.setdefault(c.spec.cache_key(), []).append(c)
    queues = list(by_spec.values())
    out: list[Candidate] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def _rng(*parts: Any) -> random.Random:
    return random.Random(int(stable_hash([str(p) for p in parts])[:16], 16))


def _gpu_slug(key: Any) -> str | None:
    """The slug of a hardware key stored as a dict (a run's config, a result's extra); None for anything else."""
    try:
        return HardwareKey.from_dict(key).slug if isinstance(key, dict) else None
    except (KeyError, TypeError, ValueError):  # not a key this build can read: it says nothing of the GPU
        return None


def _reported_gpu(result: EvalResult) -> str | None:
    """The slug of the device a result was measured on, as the evaluator reports it (None when it does not)."""
    return _gpu_slug(result.extra.get("hardware")) if isinstance(result.extra, dict) else None


def _first_reported_gpu(results: Iterable[EvalResult]) -> str | None:
    return next(filter(None, map(_reported_gpu, results)), None)


def measured_gpu(config: dict[str, Any], results: Iterable[EvalResult]) -> str | None:
    """The slug of the GPU a run is measured on, for reports: what its results say, else the key the run recorded
    when it started (None for a run from before GPUs were recorded that has no timed result)."""
    return _first_reported_gpu(results) or _gpu_slug(config.get("hardware"))


class SearchEngine:
    """Runs one search over ``config.specs``. ``operators``: (operator, weight) pairs; ``store`` (KernelStore
    interface: put/lookup) may be None to search without promoting. ``default_genome`` defaults to
    ``avo_inductor.kernels.render``'s, imported lazily."""

    def __init__(self, db: SearchDatabase, evaluator: Evaluator,
                 operators: Sequence[tuple[VariationOperator, float]], config: SearchConfig, *, store: Any = None,
                 hardware: HardwareKey | None = None, software: SoftwareKey | None = None,
                 on_event: Callable[[SearchEvent], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 default_genome: Callable[..., Any] | None = None, measures_locally: bool = True) -> None:
        if not operators or all(w <= 0 for _, w in operators):
            raise ValueError("need at least one variation operator with a positive weight")
        self.db, self.evaluator, self.config, self.store = db, evaluator, config, store
        self.operators = [(op, float(w)) for op, w in operators if w > 0]
        self.hardware = hardware or HardwareKey.current()
        self.software = software or SoftwareKey.current()
        self.on_event, self.clock, self._default_genome = on_event, clock, default_genome
        self.islands: dict[str, list[pop.Island]] = {}
        self._counts = [0, 0]
        self._spent_before = 0.0
        self._run_id = ""
        self._slice_end: float | None = None
        self._run_candidates: list[Candidate] = []
        self._measured_on: str | None = None  # slug of the GPU the run's results report (_check_measured_on)
        # False when candidates are timed elsewhere (Ray actors): this process's GPU is not the run's, so it is
        # neither recorded nor checked up front; the results' own GPU is still checked batch by batch.
        self.measures_locally = measures_locally

    # ---- public --------------------------------------------------------------------------------------
    def run(self, run_id: str | None = None, meta: dict[str, Any] | None = None,
            slice_s: float | None = None) -> SearchOutcome:
        """Start a new run (``meta``: extra JSON stored with its config, e.g. CLI options for resume), or
        resume ``run_id``; returns when generations or budget are used up.

        ``slice_s``: GPU time lent in slices. After this many seconds of this call the loop stops between
        batches, the best so far is promoted (nothing found is lost if no further slice comes) and the run is left
        "paused": ``resume`` continues it, and promotes again at the end of the next slice or of the run."""
        if slice_s is not None and slice_s <= 0:
            raise ValueError(f"slice_s must be positive; got {slice_s}")
        requeued = 0
        if run_id is None:
            gpu = {"hardware": self.hardware.to_dict()} if self.measures_locally else {}
            run_id = self.db.create_run({"search": self.config.to_dict(), **(meta or {}), **gpu})
        else:
            if self.measures_locally:
                self._check_same_gpu(run_id)
            requeued = self.db.requeue_in_flight(run_id)
            self.db.set_run_status(run_id, "running")
        self._run_id = run_id
        info = self.db.get_run(run_id)
        self._spent_before, self._counts = info.budget_spent_s, [info.evaluated, info.failed]
        self._segment_start = self._mark = self.clock()
        if requeued:  # only now: every event reports the budget left, which needs the segment's start
            self._emit("note", run_id, info.generation,
                       f"re-queued {requeued} candidate(s) left in flight by the previous process")
        self._slice_end = None if slice_s is None else self._segment_start + slice_s
        self._spend = self._operator_spend()
        evaluated = self.db.evaluated(run_id)
        self._measured_on = _first_reported_gpu(res for _, res in evaluated)
        migrations = self.db.migrations(run_id)
        for spec in self.config.specs:
            key = spec.cache_key()
            mine = [ind for ind in evaluated if ind[0].spec.cache_key() == key]
            self.islands[key] = pop.rebuild(self.config.islands, mine, migrations)
        self._emit("run_started", run_id, info.generation, "resumed" if info.evaluated or info.pending else "started")
        try:
            stop = self._loop(run_id)
            outcome = self._promote_all(run_id, stop)
        except BaseException:
            self._account(run_id)
            self.db.requeue_in_flight(run_id)
            self.db.set_run_status(run_id, "interrupted")
            raise
        self._account(run_id)
        self.db.set_run_status(run_id, "paused" if stop == "slice" else "finished")
        self._emit("run_finished", run_id, self.db.get_run(run_id).generation, stop,
                   data={"promoted": outcome.promoted, "rejected": outcome.rejected})
        return outcome

    def _check_same_gpu(self, run_id: str) -> None:
        """Refuse to resume on another kind of GPU: the run's population, its screening speedups and the slice's
        promotion choices compare timings, and timings taken on an H100 and an H200 (lent machines give either)
        are never comparable. A run from before the GPU was recorded carries no key and is resumed as before."""
        started_on = _gpu_slug(self.db.get_run(run_id).config.get("hardware"))
        if started_on is not None and started_on != self.hardware.slug:
            raise SearchRefused(f"run {run_id} was measured on {started_on}, this is {self.hardware.slug}: "
                                f"its timings are not comparable across GPUs; start a new run here (run --campaign "
                                f"...) instead of resuming it")

    def _check_measured_on(self, run_id: str, results: Sequence[EvalResult]) -> None:
        """Every screening result of a run must come from one kind of GPU, whatever the evaluator (local workers,
        Ray actors on other machines) and however old the run: the first GPU a result reports is the run's, and a
        batch from another is refused before it is recorded (its candidates go back to the queue; the time it took
        stays charged to the run's budget, as any evaluation's). Promotion re-measurements are not checked: a record
        is stored under the GPU its own re-measurement reports (promotion.build_record)."""
        for res in results:
            gpu = _reported_gpu(res)
            if gpu is None:
                continue
            if self._measured_on is None:
                self._measured_on = gpu
            elif gpu != self._measured_on:
                raise SearchRefused(f"run {run_id} is measured on {self._measured_on}, but candidate "
                                    f"{res.candidate_id} was timed on {gpu}: timings are not comparable across GPUs; "
                                    f"evaluate this run on {self._measured_on} only, or start a new run for {gpu}")

    # ---- loop ----------------------------------------------------------------------------------------
    def _loop(self, run_id: str) -> str:
        while True:
            gen = self.db.get_run(run_id).generation  # the next generation to finish; 0 = the seeds
            if gen > self.config.generations:
                return "generations"
            stop = self._time_up()
            if stop:
                return stop
            pending = _round_robin_by_spec(self._pending_or_propose(run_id, gen))
            self._emit("generation", run_id, gen, f"generation {gen}: {len(pending)} candidate(s)")
            # Default batch: one candidate per evaluation device, so the wall-clock budget is checked between
            # batches (a whole generation per call overran a 5-minute budget by minutes on an H200).
            devices = max(1, int(self.evaluator.parallelism))
            step = self.config.eval_batch or devices
            if self._slice_end is not None:
                step = min(step, devices)  # a slice must end on time: one candidate per device between checks
            for i in range(0, len(pending), step):
                stop = self._time_up()
                if stop:
                    return stop
                self._evaluate(run_id, gen, pending[i:i + step])
            self._finish_generation(run_id, gen)

    def _pending_or_propose(self, run_id: str, gen: int) -> list[Candidate]:
        """The generation's pending candidates; a fresh set is proposed only when ``gen`` has none at all.

        A run killed after its last batch but before ``complete_generation`` resumes with every candidate of
        ``gen`` done and the generation still open: proposing again would run that generation twice (a second
        set of children, twice the agent spend), so it is only completed (with its migration, if due).
        """
        pending = self.db.candidates(run_id, PENDING)
        if pending:
            return pending
        if self.db.generation_size(run_id, gen):
            self._emit("note", run_id, gen, f"generation {gen} was fully evaluated before the restart; completing it")
            return []
        proposals = self._seeds() if gen == 0 else self._propose(gen)
        self.db.add_candidates(run_id, proposals, [content_hash(c) for c in proposals])
        return self.db.candidates(run_id, PENDING)

    def _finish_generation(self, run_id: str, gen: int) -> None:
        """Migrate (when due) and advance the run's generation in one database transaction, so a kill can never
        leave a migration recorded with its generation still open (a resume would migrate twice)."""
        due = gen and self.config.migration_interval and gen % self.config.migration_interval == 0
        moves = self._migrate() if due else {}
        self.db.complete_generation(run_id, gen + 1, [m for key_moves in moves.values() for m in key_moves])
        for key, key_moves in moves.items():
            self._emit("migration", run_id, gen, f"{key}: {len(key_moves)} migrant(s)", data={"moves": key_moves})

    def _seeds(self) -> list[Candidate]:
        """Per spec: the template's default genome, the campaign's ``seed_genomes`` over it, and ``seed_variants``
        structured variants of it, dealt round the islands."""
        if self._default_genome is None:
            from ..kernels.render import default_genome
            self._default_genome = default_genome
        out: list[Candidate] = []
        for spec in self.config.specs:
            base = self._default_genome(spec, self.hardware)
            seed = Candidate(id="", spec=spec, genome=base, operator="seed", diff="default genome")
            seed = dataclasses.replace(seed, id=candidate_id(spec, content_hash(seed)))
            mine = [seed, *self._curated_seeds(spec, base, {seed.id})]
            mine += self._incumbent_seed(spec, {c.id for c in mine})
            variants = StructuredOperator(crossover_rate=0.0, hardware=self.hardware).propose(
                [(seed, None)], self.config.seed_variants, _rng(self.config.seed, spec.cache_key()).getrandbits(31))
            mine += [v for v in variants if v.id not in {c.id for c in mine}]
            out += [dataclasses.replace(c, island=i % self.config.islands, generation=0) for i, c in enumerate(mine)]
        return out

    def _incumbent_seed(self, spec: AttentionSpec, known: set[str]) -> list[Candidate]:
        """The kernel a compiled model runs at ``spec`` today (cache/serving.py: the store's exact record, or a class
        record tuned at a neighbouring shape) as a seed. The search's best is then measured against it at this very
        shape, so what it promotes is never slower, within the screening's spread, than what the model ran out of
        the box (a neighbour's kernel can beat everything else the search finds at this shape; promoted without it,
        an exact record would shadow it and the model would get slower). A genome the template cannot render at
        this spec is left out: it cannot run here either."""
        if self.store is None or not hasattr(self.store, "lookup_class"):
            return []
        from ..cache.serving import lookup_record
        from .operators import renderable

        hit = lookup_record(self.store, spec, self.hardware)
        if hit is None:
            return []
        record = hit.record
        where = f"a class record tuned at {record.spec.to_text()}" if hit.is_class else f"stored in {hit.layer}"
        diff = f"incumbent: {record.kernel_id}, {where}"
        if record.tier == "template" and record.genome is not None:
            genome = KernelGenome.from_dict(record.genome)
            if not renderable(genome, spec):
                return []
            cand = Candidate(id="", spec=spec, genome=genome, operator="seed", diff=diff)
        elif record.source is not None:
            cand = Candidate(id="", spec=spec, source=record.source, entry_point=record.entry_point,
                             bwd_entry_point=record.bwd_entry_point, launch=dict(record.launch), operator="seed",
                             diff=diff)
        else:
            return []
        cand = dataclasses.replace(cand, id=candidate_id(spec, content_hash(cand)))
        return [] if cand.id in known else [cand]

    def _curated_seeds(self, spec: AttentionSpec, base: Any, known: set[str]) -> list[Candidate]:
        """``config.seed_genomes`` applied over ``base`` and clamped to the spec; knobs the spec does not search
        are left at the default (a backward tile on a forward-only spec would only duplicate the forward kernel);
        duplicates dropped."""
        from .operators import clamp_to_spec, genome_diff, renderable, spec_space

        out: list[Candidate] = []
        # e.g. backward knobs only when the spec trains; a flash_ws90 base keeps to that template's knobs
        meaningful = spec_space(spec, self.hardware, getattr(base, "template", "flash_v1"))
        for overrides in self.config.seed_genomes:
            overrides = {k: v for k, v in overrides.items() if k in meaningful}
            genome = clamp_to_spec(base.replace(**overrides), spec, self.hardware)
            if not renderable(genome, spec):
                continue
            cand = Candidate(id="", spec=spec, genome=genome, operator="seed",
                             diff=f"campaign seed: {genome_diff(base, genome) or 'same as default'}")
            cand = dataclasses.replace(cand, id=candidate_id(spec, content_hash(cand)))
            if cand.id not in known:
                known.add(cand.id)
                out.append(cand)
        return out

    def _parents(self, spec: AttentionSpec, island: pop.Island,
                 rng: random.Random) -> list[tuple[Candidate, EvalResult | None]]:
        k = max(2, min(self.config.population, 8))
        chosen = pop.select_parents(island, k, rng, self.config.exploit_ratio, self.config.top_k)
        if chosen:
            return list(chosen)
        # Empty island (its seeds failed or it has none yet): borrow the spec's best elites from any island,
        # else restart from whatever seeds exist, failed or not, so mutation can move away from a bad default.
        others = sorted((ind for isl in self.islands[spec.cache_key()] for ind in isl.elites.values()),
                        key=lambda ind: (-ind[1].score, ind[0].id))
        if others:
            return [(dataclasses.replace(c, island=island.index), r) for c, r in others[:k]]
        return [(dataclasses.replace(c, island=island.index), None) for c in self._seed_pool(spec)]

    def _seed_pool(self, spec: AttentionSpec) -> list[Candidate]:
        return [c for c in self._run_candidates if c.spec.cache_key() == spec.cache_key() and c.generation == 0]

    def _propose(self, gen: int) -> list[Candidate]:
        self._run_candidates = self.db.candidates(self._run_id)
        self._share_deadline()
        out: list[Candidate] = []
        seen: set[str] = set()
        for spec in self.config.specs:
            key = spec.cache_key()
            for island in self.islands[key]:
                rng = _rng(self.config.seed, key, island.index, gen)
                parents = self._parents(spec, island, rng)
                if not parents:
                    continue
                weights = [w for _, w in self.operators]
                picks = rng.choices(range(len(self.operators)), weights=weights, k=self.config.population)
                for idx, (op, _) in enumerate(self.operators):
                    want = picks.count(idx)
                    for _ in range(3):  # retry when children repeat known candidates
                        if want <= 0:
                            break
                        try:
                            children = op.propose(parents, want, rng.getrandbits(31))
                        except Exception as exc:  # one broken operator (API down, budget) must not stop the search
                            self._emit("note", self._run_id, gen,
                                       f"operator {op.name} failed: {type(exc).__name__}: {exc}")
                            break
                        for c in children:
                            c = dataclasses.replace(c, spec=spec, island=island.index, generation=gen,
                                                    operator=c.operator if c.operator not in ("", "seed") else op.name)
                            c = dataclasses.replace(c, id=candidate_id(spec, content_hash(c)))
                            if c.id in seen or self.db.has_candidate(self._run_id, c.id):
                                continue
                            seen.add(c.id)
                            out.append(c)
                            want -= 1
        return out

    def _share_deadline(self) -> None:
        """Hand the run's wall-clock deadline (on the engine's clock) to operators that take one (the agent): the
        budget is otherwise checked only between batches, and one tool-use session can outlast all of it."""
        left = self._budget_left()
        deadline = None if left is None else self.clock() + left
        for op, _ in self.operators:
            set_deadline = getattr(op, "set_deadline", None)
            if callable(set_deadline):
                set_deadline(deadline, self.clock)

    def _evaluate(self, run_id: str, gen: int, batch: Sequence[Candidate]) -> None:
        self.db.mark_evaluating(run_id, [c.id for c in batch])
        results = list(self.evaluator.evaluate(batch))
        if [r.candidate_id for r in results] != [c.id for c in batch]:
            raise RuntimeError(f"evaluator returned results for {[r.candidate_id for r in results]}, "
                               f"expected {[c.id for c in batch]} in order")
        self._check_measured_on(run_id, results)
        self.db.record_results(run_id, results)
        for cand, res in zip(batch, results, strict=True):
            self._counts[0] += 1
            self._counts[1] += 0 if res.ok else 1
            key = cand.spec.cache_key()
            isl = self.islands[key]
            isl[cand.island % len(isl)] = pop.insert(isl[cand.island % len(isl)], (cand, res))
        self._account(run_id)
        self._emit("evaluated", run_id, gen, f"{len(batch)} evaluated, {sum(not r.ok for r in results)} failed",
                   data={"stages": [r.stage.value for r in results]})

    def _migrate(self) -> dict[str, list[tuple[str, int, int]]]:
        """Ring migration on every spec's islands (in memory); returns the moves per spec key for the caller
        to commit together with the generation's completion."""
        out: dict[str, list[tuple[str, int, int]]] = {}
        for key, islands in self.islands.items():
            self.islands[key], moves = pop.migrate(islands, self.config.migrants)
            if moves:
                out[key] = moves
        return out

    # ---- promotion -----------------------------------------------------------------------------------
    def _promote_all(self, run_id: str, stop: str) -> SearchOutcome:
        best: dict[str, tuple[str, float]] = {}
        promoted: dict[str, str] = {}
        rejected: dict[str, str] = {}
        winners: list[tuple[float, Candidate]] = []  # (screening gain over the fallback, candidate)
        waiting = Counter(c.spec.cache_key() for c in self.db.candidates(run_id, PENDING))
        for spec in self.config.specs:
            key = spec.cache_key()
            top = pop.best_overall(self.islands[key])
            if top is None:
                # A paused slice may end before a spec's first candidate ran: say so, not that all of them failed.
                rejected[key] = (f"not evaluated yet ({waiting[key]} candidate(s) pending: resume the run)"
                                 if waiting[key] else "no candidate passed the cascade")
                continue
            cand, res = top
            best[key] = (cand.id, res.score)
            gain = res.speedup_vs_fallback  # what promotion decides on (search/promotion.py)
            if self.config.require_speedup and gain is not None and gain < SCREEN_FLOOR:
                # Re-measuring costs a worker 10-100 s per spec (H100); a screening speedup this far below 1 cannot
                # clear 1 + spread on re-measurement, so the spec keeps its SDPA fallback without one.
                rejected[key] = (f"best screening speedup over the fallback {gain:.3f}x < {SCREEN_FLOOR}: "
                                 "not re-measured")
                continue
            decided = self._decided(run_id, cand)
            if decided is not None:
                ok, why = decided
                (promoted if ok else rejected)[key] = why
                self._emit("promotion", run_id, self.config.generations, f"{key}: {why}",
                           data={"candidate": cand.id, "promoted": ok, "re_measured": False})
                continue
            winners.append((gain or 0.0, cand))
        if not self.config.promote:
            return SearchOutcome(run_id, stop, best, promoted, rejected)
        # Best first, each stored before the next is re-measured: a slice whose device call ends mid-promotion keeps
        # the most promising specs' verdicts.
        ordered = [cand for _, cand in sorted(winners, key=lambda w: -w[0])]
        if ordered:
            self._emit("note", run_id, self.config.generations,
                       f"re-measuring {len(ordered)} winner(s) for promotion, best first")
        for cand, again in zip(ordered, promotion_eval_batch(self.evaluator, ordered), strict=True):
            key = cand.spec.cache_key()
            self.db.record_results(run_id, [again], promotion=True)
            ok, why = promotion_decision(again, self.config.require_speedup, self.config.min_gain)
            if ok and self.store is not None:
                ok, why = self._store(run_id, cand, again, why)
            if ok:
                promoted[key] = why
            else:
                rejected[key] = why
            self._emit("promotion", run_id, self.config.generations, f"{key}: {why}",
                       data={"candidate": cand.id, "promoted": ok})
        return SearchOutcome(run_id, stop, best, promoted, rejected)

    def _decided(self, run_id: str, cand: Candidate) -> tuple[bool, str] | None:
        """(promoted, why) when an earlier slice of this run already decided on ``cand``, else None (re-measure).

        Slices promote their best at every end; re-measuring costs a worker 10-100 s per spec on an H100, and on
        session 14's H100 re-measuring three winners that earlier slices had shipped outlasted the device call. So
        a spec whose best is still the candidate decided before is not re-measured when that candidate's record is
        in the store (its own layers or the shipped bundles), or when its re-measurement ran and fell short (a
        second one would only sample the noise again). A failed re-measurement, a record missing from this store
        (a fresh host) and a better candidate are decided anew."""
        if not self.config.promote:
            return None
        earlier = self.db.result(run_id, cand.id, promotion=True)
        if earlier is None:
            return None
        kernels = {p["kernel_id"] for p in self.db.promotions(run_id) if p.get("candidate_id") == cand.id}
        if kernels:
            hit = self.store.lookup(cand.spec, self.hardware) if self.store is not None else None
            if hit is not None and hit.record.kernel_id in kernels:
                return True, f"{hit.record.kernel_id} (promoted by an earlier slice of this run; in {hit.layer})"
            return None
        ok, why = promotion_decision(earlier, self.config.require_speedup, self.config.min_gain)
        if ok or not earlier.ok:
            return None  # passed but was not stored (the store held a faster one then), or the re-measurement failed
        return False, f"{why} (re-measured by an earlier slice of this run)"

    def _store(self, run_id: str, cand: Candidate, result: EvalResult, why: str) -> tuple[bool, str]:
        record = build_record(cand, result, self.hardware, self.software)
        hit = self.store.lookup(record.spec, record.hardware)
        old = hit.record.metrics.speedup if hit is not None and hit.record.operator != "baseline" else None
        if old is not None and result.speedup is not None and old >= result.speedup:
            return False, f"store already holds {hit.record.kernel_id} at {old:.3f}x (>= {result.speedup:.3f}x)"
        skey = self.store.put(record, publish=True)  # also to the fleet's remote cache, when one is configured
        self.db.record_promotion(record.kernel_id, run_id, cand.id, cand.spec.cache_key(),
                                 str(skey or store_key(record.spec, record.hardware)), result.speedup)
        return True, record.kernel_id

    # ---- accounting ----------------------------------------------------------------------------------
    def _operator_spend(self) -> tuple[float, int]:
        """(dollars, tokens) spent so far by operators that keep a ``budget`` (AgentOperator) or ``spent_dollars``."""
        dollars, tokens = 0.0, 0
        for op, _ in self.operators:
            budget = getattr(op, "budget", None)
            dollars += float(getattr(budget, "dollars_used", getattr(op, "spent_dollars", 0.0)) or 0.0)
            tokens += int(getattr(budget, "tokens_used", 0) or 0)
        return dollars, tokens

    def _account(self, run_id: str) -> None:
        now, (dollars, tokens) = self.clock(), self._operator_spend()
        self.db.add_spend(run_id, seconds=now - self._mark, dollars=dollars - self._spend[0],
                          tokens=tokens - self._spend[1])
        self._mark, self._spend = now, (dollars, tokens)

    def _budget_left(self) -> float | None:
        if self.config.budget_s is None:
            return None
        used = self._spent_before + (self.clock() - self._segment_start)
        return max(0.0, self.config.budget_s - used)

    def _time_up(self) -> str | None:
        """"budget" when the run's wall-clock budget is spent, "slice" when this call's slice is over, else None."""
        if self._budget_left() == 0.0:
            return "budget"
        if self._slice_end is not None and self.clock() >= self._slice_end:
            return "slice"
        return None

    def _best_scores(self) -> dict[str, float]:
        out = {}
        for key, islands in self.islands.items():
            top = pop.best_overall(islands)
            out[key] = top[1].score if top else 0.0
        return out

    def _emit(self, kind: str, run_id: str, gen: int, message: str = "", data: dict[str, Any] | None = None) -> None:
        if self.on_event is not None:
            self.on_event(SearchEvent(kind, run_id, gen, message, self._counts[0], self._counts[1],
                                      self._best_scores(), self._budget_left(), data or {}))
