"""Islands of MAP-Elites archives, ring migration and parent selection — pure, seeded functions.

Islands keep lineages apart so one early winner cannot take over every island (diversity); the archive
keeps the best kernel per trait cell (tile shape x pipelining depth) so a slower-today tiling survives as a
stepping stone. Nothing here does I/O: the engine owns the islands and rebuilds them from the database.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .types import Candidate, EvalResult

Individual = tuple[Candidate, EvalResult]
Cell = tuple[Any, ...]


def stage_bucket(num_stages: int) -> int:
    """Pipelining depth bucket: 1 (none), 2 (double buffer), 3+ (deep); finer steps rarely change the tiling."""
    return 0 if num_stages <= 1 else (1 if num_stages == 2 else 2)


def traits(candidate: Candidate) -> Cell:
    """MAP-Elites cell of a candidate: (block_m, block_n, stage bucket, kv_splits > 1).

    Free-form sources (agent) use their launch config when it names tiles, else share one "free" cell per
    island, so agent kernels compete with each other but never evict a genome elite.
    """
    g = candidate.genome
    if candidate.source is None and g is not None:
        return (g.block_m, g.block_n, stage_bucket(g.num_stages), g.kv_splits > 1)
    launch = {str(k).lower(): v for k, v in candidate.launch.items()}
    if "block_m" in launch and "block_n" in launch:
        return ("src", launch["block_m"], launch["block_n"], stage_bucket(int(launch.get("num_stages", 2))))
    return ("src",)


@dataclass(frozen=True)
class Island:
    """One island's MAP-Elites archive: cell -> best passing (candidate, result). Treat ``elites`` as read-only."""

    index: int
    elites: dict[Cell, Individual] = field(default_factory=dict)

    def ranked(self) -> list[Individual]:
        """Elites best first; ties broken by candidate id so ranking is deterministic."""
        return sorted(self.elites.values(), key=lambda ind: (-ind[1].score, ind[0].id))

    def best(self) -> Individual | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None


def insert(island: Island, individual: Individual) -> Island:
    """Island with ``individual`` placed in its cell if it passed and strictly beats the cell's elite."""
    cand, result = individual
    if not result.ok:
        return island
    cell = traits(cand)
    incumbent = island.elites.get(cell)
    if incumbent is not None and (incumbent[1].score >= result.score or incumbent[0].id == cand.id):
        return island
    elites = dict(island.elites)
    elites[cell] = individual
    return Island(island.index, elites)


def select_parents(island: Island, n: int, rng: random.Random, exploit_ratio: float = 0.7,
                   top_k: int = 4) -> list[Individual]:
    """``n`` parents: with probability ``exploit_ratio`` one of the top-k elites, else any elite at random.

    Exploitation refines what is fast now; exploration keeps other cells breeding. Empty island -> [].
    """
    ranked = island.ranked()
    if not ranked:
        return []
    head = ranked[: max(1, top_k)]
    return [rng.choice(head) if rng.random() < exploit_ratio else rng.choice(ranked) for _ in range(n)]


def migrate(islands: Sequence[Island], n_migrants: int = 1) -> tuple[list[Island], list[tuple[str, int, int]]]:
    """Ring migration: the best ``n_migrants`` of island i are offered to island (i+1) mod len.

    Returns the new islands and the moves that took effect as (candidate id, from island, to island).
    Emigrants are chosen from the islands *before* any insertion, so the result does not depend on order.
    """
    if len(islands) < 2 or n_migrants < 1:
        return list(islands), []
    emigrants = [isl.ranked()[:n_migrants] for isl in islands]
    new = list(islands)
    moves: list[tuple[str, int, int]] = []
    for i, group in enumerate(emigrants):
        dest = (i + 1) % len(islands)
        for ind in group:
            after = insert(new[dest], ind)
            if after is not new[dest]:
                moves.append((ind[0].id, islands[i].index, islands[dest].index))
            new[dest] = after
    return new, moves


def best_overall(islands: Sequence[Island]) -> Individual | None:
    """Best elite over all islands (highest score, then smallest id)."""
    pool = [ind for isl in islands for ind in isl.elites.values()]
    return min(pool, key=lambda ind: (-ind[1].score, ind[0].id)) if pool else None


def rebuild(n_islands: int, evaluated: Sequence[Individual],
            migrations: Sequence[tuple[str, int]] = ()) -> list[Island]:
    """Islands from the database: every evaluated individual in its own island (in evaluation order),
    then the recorded migrations (candidate id, destination island) replayed."""
    islands = [Island(i) for i in range(n_islands)]
    by_id: dict[str, Individual] = {}
    for ind in evaluated:
        by_id[ind[0].id] = ind
        k = ind[0].island % n_islands
        islands[k] = insert(islands[k], ind)
    for cid, dest in migrations:
        if cid in by_id:
            k = dest % n_islands
            islands[k] = insert(islands[k], by_id[cid])
    return islands
