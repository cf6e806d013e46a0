"""Islands, MAP-Elites cells, ring migration and seeded parent selection."""
from __future__ import annotations

import random

from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.search import population as pop
from avo_inductor.search.types import Candidate, EvalResult, Stage
from avo_inductor.spec import AttentionSpec

SPEC = AttentionSpec(1, 2, 2, 256, 256, 64)


def ind(cid: str, score: float, ok: bool = True, island: int = 0, **knobs: object) -> pop.Individual:
    cand = Candidate(cid, SPEC, genome=KernelGenome(**knobs), island=island)  # type: ignore[arg-type]
    return cand, EvalResult(cid, ok, Stage.PASSED if ok else Stage.COMPILE, speedup=score)


def test_map_elites_keeps_best_per_cell() -> None:
    isl = pop.Island(0)
    isl = pop.insert(isl, ind("a", 1.1, block_m=64, block_n=64))
    isl = pop.insert(isl, ind("b", 1.3, block_m=64, block_n=64, exp2=False))  # same cell, better
    isl = pop.insert(isl, ind("c", 1.2, block_m=64, block_n=64))  # same cell, worse than b
    isl = pop.insert(isl, ind("d", 0.9, block_m=32, block_n=64))  # new cell, kept although slower
    isl = pop.insert(isl, ind("e", 5.0, ok=False, block_m=16))  # failed: never an elite
    assert [c.id for c, _ in isl.ranked()] == ["b", "d"]
    assert pop.traits(isl.ranked()[0][0]) == (64, 64, 1, False)


def test_selection_is_seeded_and_mixes_exploit_and_explore() -> None:
    isl = pop.Island(0)
    for i, bm in enumerate((16, 32, 64, 128, 256)):
        for j, bn in enumerate((16, 32, 64)):
            isl = pop.insert(isl, ind(f"c{i}{j}", 1 + i * 0.1 + j * 0.01, block_m=bm, block_n=bn))
    a = pop.select_parents(isl, 200, random.Random(5), exploit_ratio=0.7, top_k=3)
    b = pop.select_parents(isl, 200, random.Random(5), exploit_ratio=0.7, top_k=3)
    assert [c.id for c, _ in a] == [c.id for c, _ in b]
    top3 = {c.id for c, _ in isl.ranked()[:3]}
    share = sum(c.id in top3 for c, _ in a) / len(a)
    assert 0.7 < share < 0.95  # 0.7 exploit + a little exploration landing in the top 3
    assert len({c.id for c, _ in a}) > 6  # exploration reaches other cells
    assert pop.select_parents(pop.Island(1), 4, random.Random(0)) == []
    only_exploit = pop.select_parents(isl, 50, random.Random(1), exploit_ratio=1.0, top_k=1)
    assert {c.id for c, _ in only_exploit} == {isl.ranked()[0][0].id}


def test_ring_migration_moves_best_to_next_island() -> None:
    islands = [pop.insert(pop.Island(i), ind(f"best{i}", 1.0 + i, island=i, block_m=16 * 2 ** i)) for i in range(3)]
    new, moves = pop.migrate(islands, n_migrants=1)
    assert moves == [("best0", 0, 1), ("best1", 1, 2), ("best2", 2, 0)]
    assert {c.id for c, _ in new[0].ranked()} == {"best0", "best2"}
    assert islands[0].elites != new[0].elites  # inputs untouched
    again, _ = pop.migrate(islands, 1)
    assert [sorted(i.elites) for i in again] == [sorted(i.elites) for i in new]
    assert pop.best_overall(new)[0].id == "best2"  # type: ignore[index]


def test_rebuild_replays_islands_and_migrations() -> None:
    evaluated = [ind("x", 1.2, island=0, block_m=32), ind("y", 1.5, island=1, block_m=64), ind("z", 0.5, False, 1)]
    islands = pop.rebuild(2, evaluated, migrations=[("y", 0)])
    assert {c.id for c, _ in islands[0].ranked()} == {"x", "y"}
    assert {c.id for c, _ in islands[1].ranked()} == {"y"}
