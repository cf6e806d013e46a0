"""RayEvaluator against an in-test stand-in for the ``ray`` module (Ray is an optional extra, absent in CI):
batches are sharded over one actor per GPU, results come back in the candidates' order, each actor's
evaluator is pinned to the physical GPU Ray assigned it."""
from __future__ import annotations

import sys
import types
from typing import Any, Sequence

import pytest

from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.search.types import Candidate, EvalResult, Stage

from search_fakes import SPEC, synthetic_speedup

BUILT: list[dict[str, Any]] = []


class _PinnedEvaluator:
    def __init__(self, devices: Sequence[str], **kwargs: Any) -> None:
        BUILT.append({"devices": list(devices), **kwargs})
        self.device = devices[0]

    def evaluate(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        return [EvalResult(c.id, True, Stage.PASSED, speedup=synthetic_speedup(c.genome), extra={"device": self.device})  # type: ignore[arg-type]
                for c in candidates]

    @property
    def parallelism(self) -> int:
        return 1

    def promote(self, candidate: Candidate) -> EvalResult:
        return EvalResult(candidate.id, True, Stage.PASSED, speedup=9.0, extra={"device": self.device})

    def promote_many(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        return [self.promote(c) for c in candidates]

    def close(self) -> None:
        pass


def _fake_ray(gpus: int) -> types.ModuleType:
    ray = types.ModuleType("ray")
    state = {"next_gpu": 0, "current": [0]}

    class _Method:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def remote(self, *args: Any) -> Any:
            return self.fn(*args)

    class _Handle:
        def __init__(self, obj: Any) -> None:
            for name in ("evaluate", "promote_many", "close"):
                setattr(self, name, _Method(getattr(obj, name)))

    def remote(**opts: Any) -> Any:
        assert opts == {"num_gpus": 1}

        def wrap(cls: Any) -> Any:
            class _Remote:
                @staticmethod
                def remote(*args: Any) -> _Handle:
                    state["current"] = [state["next_gpu"] + 4]  # physical ids 4, 5, ...: not the local index
                    state["next_gpu"] += 1
                    return _Handle(cls(*args))
            return _Remote
        return wrap

    ray.init = lambda **kw: None  # type: ignore[attr-defined]
    ray.cluster_resources = lambda: {"GPU": float(gpus), "CPU": 64.0}  # type: ignore[attr-defined]
    ray.remote = remote  # type: ignore[attr-defined]
    ray.get = lambda x: x  # type: ignore[attr-defined]
    ray.get_gpu_ids = lambda: state["current"]  # type: ignore[attr-defined]
    ray.kill = lambda actor: None  # type: ignore[attr-defined]
    return ray


def test_ray_evaluator_shards_and_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", _fake_ray(gpus=3))
    monkeypatch.setitem(sys.modules, "fake_eval_mod", types.SimpleNamespace(Pinned=_PinnedEvaluator))
    from avo_inductor.search.distributed import RayEvaluator

    BUILT.clear()
    ev = RayEvaluator("ray://head:10001", factory="fake_eval_mod:Pinned", quick=True)
    assert [b["devices"] for b in BUILT] == [["cuda:4"], ["cuda:5"], ["cuda:6"]] and BUILT[0]["quick"] is True
    cands = [Candidate(f"c{i}", SPEC, genome=KernelGenome(num_warps=(2, 4, 8)[i % 3])) for i in range(7)]
    results = ev.evaluate(cands)
    assert [r.candidate_id for r in results] == [c.id for c in cands]
    assert {r.extra["device"] for r in results} == {"cuda:4", "cuda:5", "cuda:6"}
    assert ev.promote(cands[0]).speedup == 9.0
    # winners are re-checked in parallel over every actor, answers in the candidates' order
    promoted = ev.promote_many(cands[:5])
    assert [r.candidate_id for r in promoted] == [c.id for c in cands[:5]]
    assert {r.extra["device"] for r in promoted} == {"cuda:4", "cuda:5", "cuda:6"}
    assert all(r.speedup == 9.0 for r in promoted)
    ev.close()


def test_cluster_without_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", _fake_ray(gpus=0))
    from avo_inductor.search.distributed import RayEvaluator

    with pytest.raises(RuntimeError, match="reports no GPUs"):
        RayEvaluator("ray://head:10001", factory="fake_eval_mod:Pinned")
