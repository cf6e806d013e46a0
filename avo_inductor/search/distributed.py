"""Ray fan-out (``--ray-address``): evaluation batches spread over one actor per GPU in the cluster.

Each actor (``num_gpus=1``) owns the same sandboxed evaluator the local run uses, pinned to the GPU Ray gave
it, so the isolation story is unchanged; only candidates and results (plain dicts) cross the network. The
database stays in the driver as the single source of truth. Actors rather than one task per batch: a
sandbox worker pays a torch/Triton import and warm-up once per actor instead of once per batch.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from .types import Candidate, EvalResult

DEFAULT_FACTORY = "avo_inductor.search.evaluate:SandboxedEvaluator"


def import_ray() -> Any:
    """Import ray or raise a RuntimeError that says how to get it (it is an optional extra)."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise RuntimeError("--ray-address needs Ray, which is not installed: pip install 'avo_inductor[ray]' "
                           "(or run without --ray-address to use the local GPUs)") from None


def _load(factory: str) -> Any:
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


class _EvalActorImpl:
    """Body of the Ray actor: one local evaluator on the GPU Ray assigned to this actor."""

    def __init__(self, factory: str, kwargs: dict[str, Any]) -> None:
        ray = importlib.import_module("ray")
        gpu_ids = ray.get_gpu_ids()
        # The sandbox pins its worker with CUDA_VISIBLE_DEVICES=<index>; hand it the physical id Ray chose,
        # not "0", or every actor's worker would land on GPU 0 of its host.
        device = f"cuda:{int(gpu_ids[0])}" if gpu_ids else "cpu"
        self.evaluator = _load(factory)(devices=[device], **kwargs)

    def evaluate(self, payload: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = self.evaluator.evaluate([Candidate.from_dict(p) for p in payload])
        return [r.to_dict() for r in results]

    def promote_many(self, payload: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = self.evaluator.promote_many([Candidate.from_dict(p) for p in payload])
        return [r.to_dict() for r in results]

    def close(self) -> None:
        self.evaluator.close()


class RayEvaluator:
    """Evaluator over a Ray cluster: ``evaluate`` and ``promote_many`` split a batch round-robin over the GPU
    actors (winners re-checked in parallel, as the local evaluator does over its GPUs) and return results in
    the candidates' order."""

    def __init__(self, address: str, factory: str = DEFAULT_FACTORY, actors: int | None = None,
                 **evaluator_kwargs: Any) -> None:
        self.ray = import_ray()
        self.ray.init(address=address, ignore_reinit_error=True)
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        count = actors or gpus
        if count < 1:
            raise RuntimeError(f"the Ray cluster at {address} reports no GPUs; evaluation needs one per actor")
        actor_cls = self.ray.remote(num_gpus=1)(_EvalActorImpl)
        self.actors = [actor_cls.remote(factory, evaluator_kwargs) for _ in range(count)]

    @property
    def parallelism(self) -> int:
        """Candidates evaluated at once (one per actor / GPU)."""
        return len(self.actors)

    def evaluate(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        return self._fan_out("evaluate", candidates)

    def promote(self, candidate: Candidate) -> EvalResult:
        return self._fan_out("promote_many", [candidate])[0]

    def promote_many(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        return self._fan_out("promote_many", candidates)

    def _fan_out(self, method: str, candidates: Sequence[Candidate]) -> list[EvalResult]:
        """``method`` of the actors over ``candidates`` split round-robin, results in the candidates' order."""
        if not candidates:
            return []
        shards: list[list[int]] = [list(range(i, len(candidates), len(self.actors))) for i in range(len(self.actors))]
        futures = [(idx, getattr(actor, method).remote([candidates[i].to_dict() for i in idx]))
                   for actor, idx in zip(self.actors, shards, strict=True) if idx]
        out: list[EvalResult | None] = [None] * len(candidates)
        for idx, fut in futures:
            for i, raw in zip(idx, self.ray.get(fut), strict=False):  # a short reply is reported below
                out[i] = EvalResult.from_dict(raw)
        missing = [candidates[i].id for i, r in enumerate(out) if r is None]
        if missing:
            raise RuntimeError(f"Ray actors returned no result for {missing}")
        return [r for r in out if r is not None]

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.get(actor.close.remote())
                self.ray.kill(actor)
            except Exception:  # shutting down: a dead actor has nothing left to close
                pass
