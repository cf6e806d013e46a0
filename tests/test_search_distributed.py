"""RayEvaluator against a real local Ray (one session for the module: 2 CPUs, 2 "GPUs" that are Ray resources
standing in for cards, no dashboard): batches sharded over one actor per GPU, results in the candidates' order,
winners re-checked in parallel, and an actor that dies mid-batch (restarted and re-run, or dead for good and its
shard re-queued) costs no candidate. The tests share one pool of actors and run in file order (the kill last);
the evaluator inside the actors is tests/ray_scripted.py."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.search.types import Candidate, Stage

from ray_scripted import score
from search_fakes import SPEC

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'avo_inductor[ray]' (in the dev extras)")

from avo_inductor.search.distributed import RayEvaluator  # noqa: E402

# One pytest-xdist worker runs the whole module (make test uses --dist loadgroup): one Ray session, not one per worker.
pytestmark = pytest.mark.xdist_group("ray")

FACTORY = "ray_scripted:ScriptedEvaluator"
GPU_IDS = ("4", "5")  # physical ids Ray hands out (CUDA_VISIBLE_DEVICES at start): not the actors' local index


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A local Ray with two GPU slots; workers import the tests' modules through PYTHONPATH."""
    tests = Path(__file__).resolve().parent
    env = {"PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ",".join(GPU_IDS)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the raylet and its workers inherit the environment of the process that starts them
    try:
        ray.init(num_cpus=2, num_gpus=len(GPU_IDS), include_dashboard=False, log_to_driver=False,
                 object_store_memory=80 * 1024 * 1024)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def evaluator(ray_session: None) -> Iterator[RayEvaluator]:
    """One pool of actors for the module (a Ray worker starts in seconds on 2 cores); the death test runs last."""
    ev = RayEvaluator("auto", factory=FACTORY, quick=True)
    yield ev
    ev.close()


def _candidates(n: int, notes: dict[int, str] | None = None) -> list[Candidate]:
    return [Candidate(f"c{i}", SPEC, genome=KernelGenome(num_warps=(2, 4, 8)[i % 3], block_m=(16, 32, 64, 128)[i % 4]),
                      notes=(notes or {}).get(i, "")) for i in range(n)]


def test_sharding_order_pinning_and_parallel_promotion(evaluator: RayEvaluator, tmp_path: Path) -> None:
    assert evaluator.parallelism == len(GPU_IDS)
    cands = _candidates(7)
    results = evaluator.evaluate(cands)
    assert [r.candidate_id for r in results] == [c.id for c in cands]
    assert [r.speedup for r in results] == [score(c) for c in cands]
    assert all(r.ok and r.stage == Stage.PASSED and r.extra["kwargs"] == {"quick": True} for r in results)
    # round-robin: candidate i ran on actor i % 2, each actor's evaluator pinned to the physical GPU Ray gave it
    by_actor = [{(r.extra["pid"], r.extra["device"]) for r in results[k::2]} for k in range(2)]
    assert all(len(s) == 1 for s in by_actor) and by_actor[0] != by_actor[1]
    assert {d for s in by_actor for _, d in s} == {f"cuda:{g}" for g in GPU_IDS}
    assert evaluator.evaluate([]) == []
    one = evaluator.promote(cands[5])
    assert one.candidate_id == "c5" and one.stage == Stage.PROMOTION and one.speedup == score(cands[5])
    # winners re-checked on every actor at once: each actor's promote_many waits at a barrier until both are
    # inside it, so actors that ran one after another would time out there
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    winners = _candidates(5, {i: f"barrier:{barrier}:2" for i in range(5)})
    promoted = evaluator.promote_many(winners)
    assert [r.candidate_id for r in promoted] == [c.id for c in winners]
    assert all(r.ok and r.stage == Stage.PROMOTION for r in promoted), [r.message for r in promoted]
    assert [r.speedup for r in promoted] == [score(c) for c in winners]
    assert len({r.extra["pid"] for r in promoted}) == 2 and len(list(barrier.iterdir())) == 2


def test_actor_dying_mid_batch_is_restarted_and_its_call_rerun(evaluator: RayEvaluator, tmp_path: Path) -> None:
    """c3 (actor 1's shard: c1, c3, c5) ends its actor's process: Ray restarts the actor and re-runs the call."""
    before = evaluator.evaluate(_candidates(2))
    cands = _candidates(6, {3: f"die-once:{tmp_path / 'died'}"})
    results = evaluator.evaluate(cands)
    assert (tmp_path / "died").exists()  # the process really ended mid-batch
    assert [r.candidate_id for r in results] == [c.id for c in cands]
    assert all(r.ok for r in results) and [r.speedup for r in results] == [score(c) for c in cands]
    assert results[0].extra["pid"] == before[0].extra["pid"]  # actor 0 untouched
    assert results[3].extra["pid"] != before[1].extra["pid"]  # actor 1 is a fresh process
    assert evaluator.parallelism == 2 and evaluator.lost == []


def test_actor_killed_mid_batch_has_its_shard_requeued(evaluator: RayEvaluator, tmp_path: Path) -> None:
    """c1 (actor 1's shard: c1, c3) kills its actor for good while the batch is in flight: the shard re-runs on
    the survivor, every candidate gets its own result in order, and the next batch runs on one actor."""
    cands = _candidates(5, {1: f"kill-once:{tmp_path / 'killed'}"})
    with pytest.warns(RuntimeWarning, match="re-queued, 1 actor"):
        results = evaluator.evaluate(cands)
    assert (tmp_path / "killed").exists()  # the kill really happened inside the batch
    assert [r.candidate_id for r in results] == [c.id for c in cands]
    assert all(r.ok for r in results) and [r.speedup for r in results] == [score(c) for c in cands]
    survivor = results[0].extra["pid"]
    assert {r.extra["pid"] for r in results} == {survivor}
    assert evaluator.parallelism == 1 and len(evaluator.lost) == 1 and "ActorDiedError" in evaluator.lost[0]
    again = evaluator.promote_many(_candidates(3))  # the run goes on with the survivor
    assert [r.candidate_id for r in again] == ["c0", "c1", "c2"] and {r.extra["pid"] for r in again} == {survivor}


def test_more_actors_than_gpus_is_refused(ray_session: None) -> None:
    with pytest.raises(RuntimeError, match=r"3 evaluation actors asked for, but .* has 2 GPUs"):
        RayEvaluator("auto", factory=FACTORY, actors=3)
