"""What the lineage report shows, read from the search database as plain frozen records (no rendering here).

One run at a time: per spec its best-so-far curve, the winner's family tree (every ancestor, with the change each
step made and its score), the islands' MAP-Elites archives rebuilt as the engine sees them on resume, and the
cascade failures by stage. Strings are kept as the database holds them; escaping is the renderer's job.
"""
from __future__ import annotations

import dataclasses
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from . import population as pop
from .database import RunInfo, SearchDatabase
from .errors import SearchNotFound, require_database
from .types import Candidate, EvalResult, Stage

MAX_TREE_NODES = 60  # ancestors drawn per winner (nearest first); deep agent lineages stay legible
MAX_EXAMPLES = 3  # distinct error messages kept per failure stage
MAX_MESSAGE = 400  # characters kept of each error message


@dataclass(frozen=True)
class EvalPoint:
    """One evaluated candidate on the time axis: seconds since the run started, its score (0 when it failed)."""

    t_s: float
    generation: int
    candidate_id: str
    ok: bool
    score: float


@dataclass(frozen=True)
class SpecProgress:
    """Every evaluation of one spec in evaluation order; ``best_so_far`` is the curve the report plots."""

    spec_key: str
    label: str
    points: tuple[EvalPoint, ...]

    @property
    def best_so_far(self) -> tuple[tuple[float, float], ...]:
        """(t_s, best passing score up to t_s), one entry per time the best improved."""
        out: list[tuple[float, float]] = []
        best = 0.0
        for p in self.points:
            if p.ok and p.score > best:
                best = p.score
                out.append((p.t_s, best))
        return tuple(out)

    @property
    def best(self) -> float:
        return max((p.score for p in self.points if p.ok), default=0.0)


@dataclass(frozen=True)
class TreeNode:
    """One ancestor of a winner: what made it (operator, genome changes against its first parent, the operator's
    own diff text) and how the cascade judged it. ``depth``: steps from the winner (0 = the winner)."""

    candidate_id: str
    operator: str
    parent_ids: tuple[str, ...]
    generation: int
    island: int
    depth: int
    genome_changes: tuple[tuple[str, str, str], ...]  # (knob, before, after)
    diff: str
    ok: bool | None
    stage: str | None
    score: float | None
    message: str

    @property
    def change(self) -> str:
        """``block_n 16→32, exp2 False→True``, else the operator's diff text (agent edits, seeds)."""
        if self.genome_changes:
            return ", ".join(f"{k} {a}→{b}" for k, a, b in self.genome_changes)
        return self.diff


@dataclass(frozen=True)
class FamilyTree:
    """A spec's winner and its ancestors. ``main_line``: root first, following first parents (what `lineage`
    prints); ``nodes``: every ancestor reached through any parent, crossover's second parents included."""

    spec_key: str
    label: str
    winner_id: str
    kernel_id: str | None
    main_line: tuple[TreeNode, ...]
    nodes: tuple[TreeNode, ...]
    truncated: bool


@dataclass(frozen=True)
class GridCell:
    """The elite of one (island, trait cell) of a spec's MAP-Elites archive."""

    island: int
    cell: str
    candidate_id: str
    score: float


@dataclass(frozen=True)
class IslandGrid:
    """A spec's islands (rows) by trait cells (columns); ``cells`` lists the columns in display order."""

    spec_key: str
    label: str
    islands: int
    cells: tuple[str, ...]
    elites: tuple[GridCell, ...]
    migrations: int


@dataclass(frozen=True)
class StageFailures:
    """How many candidates the cascade stopped at ``stage`` and a few distinct messages it gave."""

    stage: str
    count: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class ReportData:
    db_path: Path
    run: RunInfo
    run_ids: tuple[str, ...]
    progress: tuple[SpecProgress, ...]
    trees: tuple[FamilyTree, ...]
    grids: tuple[IslandGrid, ...]
    failures: tuple[StageFailures, ...]
    promotions: tuple[dict[str, object], ...]


def cell_label(cell: pop.Cell) -> str:
    """A MAP-Elites cell as the report prints it: ``64x32 s3+ split`` for genome traits, ``agent ...`` for sources."""
    stages = ("s1", "s2", "s3+")
    if cell and cell[0] == "src":
        return "agent" + (f" {cell[1]}x{cell[2]} {stages[cell[3]]}" if len(cell) == 4 else "")
    block_m, block_n, bucket, split = cell
    return f"{block_m}x{block_n} {stages[bucket]}" + (" split" if split else "")


def _cell_order(cell: pop.Cell) -> tuple[bool, str, tuple[int, ...]]:
    """Genome cells by tile size (numerically), agent cells last."""
    return (cell[0] == "src", "", tuple(int(v) for v in cell)) if cell[0] != "src" else (True, repr(cell), ())


def _genome_changes(cand: Candidate, parent: Candidate | None) -> tuple[tuple[str, str, str], ...]:
    if parent is None or cand.genome is None or parent.genome is None:
        return ()
    return tuple((f.name, str(getattr(parent.genome, f.name)), str(getattr(cand.genome, f.name)))
                 for f in dataclasses.fields(cand.genome)
                 if getattr(parent.genome, f.name) != getattr(cand.genome, f.name))


def _node(db: SearchDatabase, run_id: str, cand: Candidate, depth: int) -> TreeNode:
    parent = db.candidate(run_id, cand.parent_ids[0]) if cand.parent_ids else None
    res = db.result(run_id, cand.id)
    return TreeNode(cand.id, cand.operator, cand.parent_ids, cand.generation, cand.island, depth,
                    _genome_changes(cand, parent), cand.diff, res.ok if res else None,
                    res.stage.value if res else None, res.score if res else None,
                    res.message[:MAX_MESSAGE] if res else "")


def family_tree(db: SearchDatabase, run_id: str, winner: Candidate, label: str,
                kernel_id: str | None) -> FamilyTree:
    """Ancestors of ``winner`` within ``run_id``, breadth first from the winner, at most MAX_TREE_NODES."""
    nodes: dict[str, TreeNode] = {}
    queue: deque[tuple[str, int]] = deque([(winner.id, 0)])
    truncated = False
    while queue:
        cid, depth = queue.popleft()
        if cid in nodes:
            continue
        if len(nodes) >= MAX_TREE_NODES:
            truncated = True
            break
        cand = db.candidate(run_id, cid)
        if cand is None:  # a parent from another run or a pruned row: the tree stops there
            continue
        nodes[cid] = _node(db, run_id, cand, depth)
        queue.extend((p, depth + 1) for p in cand.parent_ids)
    line: list[TreeNode] = []
    current: str | None = winner.id
    while current in nodes and all(n.candidate_id != current for n in line):
        node = nodes[current]
        line.append(node)
        current = node.parent_ids[0] if node.parent_ids else None
    return FamilyTree(winner.spec.cache_key(), label, winner.id, kernel_id, tuple(line[::-1]),
                      tuple(nodes.values()), truncated)


def island_grid(spec_key: str, label: str, n_islands: int, evaluated: list[tuple[Candidate, EvalResult]],
                migrations: list[tuple[str, int]]) -> IslandGrid:
    """The spec's islands rebuilt from its evaluations and the run's migrations (population.rebuild, as on resume)."""
    islands = pop.rebuild(n_islands, evaluated, migrations)
    cells = sorted({cell for isl in islands for cell in isl.elites}, key=_cell_order)
    elites = tuple(GridCell(isl.index, cell_label(cell), cand.id, res.score) for isl in islands
                   for cell, (cand, res) in sorted(isl.elites.items(), key=lambda kv: _cell_order(kv[0])))
    ids = {c.id for c, _ in evaluated}
    return IslandGrid(spec_key, label, n_islands, tuple(cell_label(c) for c in cells), elites,
                      sum(cid in ids for cid, _ in migrations))


def failures_by_stage(evaluated: list[tuple[Candidate, EvalResult]],
                      promotion_failures: list[EvalResult]) -> tuple[StageFailures, ...]:
    """Failed evaluations per cascade stage (in cascade order); winners refused on re-check count as promotion."""
    failed = [(r.stage.value, r.message) for _, r in evaluated if not r.ok]
    failed += [(Stage.PROMOTION.value, f"[{r.stage.value}] {r.message}") for r in promotion_failures]
    counts = Counter(stage for stage, _ in failed)
    out = []
    for stage in Stage:
        if not counts[stage.value]:
            continue
        examples: list[str] = []
        for s, message in failed:
            text = message.strip()[:MAX_MESSAGE]
            if s == stage.value and text and text not in examples and len(examples) < MAX_EXAMPLES:
                examples.append(text)
        out.append(StageFailures(stage.value, counts[stage.value], tuple(examples)))
    return tuple(out)


def _latest_run(db: SearchDatabase) -> RunInfo:
    runs = db.runs()
    if not runs:
        raise SearchNotFound(f"no runs in {db.path}: run a search first")
    return max(runs, key=lambda r: (r.started, r.id))


def load_report_data(db_path: str | Path, run_id: str | None = None) -> ReportData:
    """Everything the report shows for ``run_id`` (default: the most recently started run) of the database."""
    with SearchDatabase(require_database(Path(db_path))) as db:
        try:
            run = db.get_run(run_id) if run_id else _latest_run(db)
        except ValueError as exc:  # an unknown run id
            raise SearchNotFound(str(exc)) from None
        labels = run.config.get("labels", {}) if isinstance(run.config.get("labels"), dict) else {}
        n_islands = int(run.config.get("search", {}).get("islands", 1) or 1)
        evaluated = db.evaluated(run.id)
        times = db.evaluation_times(run.id)
        migrations = db.migrations(run.id)
        promotions = db.promotions(run.id)
        by_spec: dict[str, list[tuple[Candidate, EvalResult]]] = {}
        for cand, res in evaluated:
            by_spec.setdefault(cand.spec.cache_key(), []).append((cand, res))
        progress, trees, grids, refused = [], [], [], []
        for key, rows in by_spec.items():
            label = str(labels.get(key) or rows[0][0].spec.short())
            progress.append(SpecProgress(key, label, tuple(
                EvalPoint(max(0.0, times.get(c.id, run.started) - run.started), c.generation, c.id, r.ok, r.score)
                for c, r in rows)))
            grids.append(island_grid(key, label, n_islands, rows, migrations))
            passing = [(c, r) for c, r in rows if r.ok]
            if not passing:
                continue
            winner = min(passing, key=lambda ind: (-ind[1].score, ind[0].id))[0]
            kernel = next((str(p["kernel_id"]) for p in promotions if p["candidate_id"] == winner.id), None)
            trees.append(family_tree(db, run.id, winner, label, kernel))
            again = db.result(run.id, winner.id, promotion=True)
            if again is not None and not again.ok:
                refused.append(again)
        return ReportData(db.path, run, tuple(r.id for r in db.runs()), tuple(progress), tuple(trees), tuple(grids),
                          failures_by_stage(evaluated, refused), tuple(promotions))
