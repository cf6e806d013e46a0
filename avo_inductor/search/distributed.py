"""Ray fan-out (``--ray-address``): evaluation batches spread over one actor per GPU in the cluster.

Each actor (``num_gpus=1``) owns the same sandboxed evaluator the local run uses, pinned to the GPU Ray gave
it, so the isolation story is unchanged; only candidates and results (plain dicts) cross the network. The
database stays in the driver as the single source of truth. Actors rather than one task per batch: a
sandbox worker pays a torch/Triton import and warm-up once per actor instead of once per batch.
"""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Any

from .types import Candidate, EvalResult, Stage

DEFAULT_FACTORY = "avo_inductor.search.evaluate:SandboxedEvaluator"
ACTOR_RESTARTS = 1  # Ray restarts a dead actor once (a fresh worker on the GPU it held)
ACTOR_TASK_RETRIES = 1  # and re-runs the call that was in flight on it
CANDIDATE_DEATHS = 2  # a candidate in flight on this many actor deaths is reported as a crash, not re-queued


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
    the candidates' order.

    An actor that dies is restarted by Ray (``max_restarts``) and its in-flight call retried once
    (``max_task_retries``). An actor dead for good has its shard re-queued over the survivors and leaves the pool;
    a candidate in flight on ``CANDIDATE_DEATHS`` deaths is reported failed (Stage.CRASH) instead of taking down
    the next actor too. The run goes on while one actor lives.
    """

    def __init__(self, address: str, factory: str = DEFAULT_FACTORY, actors: int | None = None,
                 **evaluator_kwargs: Any) -> None:
        self.ray = import_ray()
        self._errors = importlib.import_module("ray.exceptions")
        self.ray.init(address=address, ignore_reinit_error=True)
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        count = actors or gpus
        if gpus < 1:
            raise RuntimeError(f"the Ray cluster at {address} reports no GPUs; evaluation needs one per actor")
        if count > gpus:
            # An actor that can never get a GPU stays pending, and the first batch sharded to it waits forever.
            raise RuntimeError(f"{count} evaluation actors asked for, but the Ray cluster at {address} has {gpus} "
                               f"GPU{'s' if gpus != 1 else ''}; one actor needs one GPU")
        # One CPU per actor, stated: its sandbox worker compiles on the host. Ray's own default for actors is the
        # same for scheduling, but explicit numbers keep GPU nodes with few CPUs from hiding pending actors.
        actor_cls = self.ray.remote(num_gpus=1, num_cpus=1, max_restarts=ACTOR_RESTARTS,
                                    max_task_retries=ACTOR_TASK_RETRIES)(_EvalActorImpl)
        self.actors = [actor_cls.remote(factory, evaluator_kwargs) for _ in range(count)]
        self.lost: list[str] = []  # why each actor left the pool, for the run's report

    @property
    def parallelism(self) -> int:
        """Candidates evaluated at once (one per live actor / GPU)."""
        return len(self.actors)

    def evaluate(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        return self._fan_out("evaluate", candidates)

    def promote(self, candidate: Candidate) -> EvalResult:
        return self._fan_out("promote_many", [candidate])[0]

    def promote_many(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        return self._fan_out("promote_many", candidates)

    def _fan_out(self, method: str, candidates: Sequence[Candidate]) -> list[EvalResult]:
        """``method`` of the actors over ``candidates`` split round-robin, results in the candidates' order.

        Rounds: the pending candidates are sharded over the live actors; a shard whose actor died goes back to
        pending (its actor leaves the pool when Ray says it is dead for good). Each round with a death removes
        an actor or charges its candidates a death, so the loop ends."""
        out: list[EvalResult | None] = [None] * len(candidates)
        deaths = [0] * len(candidates)
        pending = list(range(len(candidates)))
        while pending:
            if not self.actors:
                raise RuntimeError("every Ray evaluation actor died: " + "; ".join(self.lost))
            shards = [pending[i::len(self.actors)] for i in range(len(self.actors))]
            futures = [(actor, idx, getattr(actor, method).remote([candidates[i].to_dict() for i in idx]))
                       for actor, idx in zip(self.actors, shards, strict=False) if idx]
            pending = []
            for actor, idx, fut in futures:
                try:
                    replies = self.ray.get(fut)
                except self._errors.RayActorError as exc:
                    self._actor_failed(actor, exc)
                    for i in idx:
                        deaths[i] += 1
                        if deaths[i] >= CANDIDATE_DEATHS:
                            out[i] = EvalResult(candidates[i].id, False, Stage.CRASH,
                                                f"its evaluation was in flight on {deaths[i]} Ray actor deaths; "
                                                f"last: {_first_line(exc)}")
                        else:
                            pending.append(i)
                    continue
                if len(replies) != len(idx):
                    raise RuntimeError(f"a Ray actor returned {len(replies)} results for {len(idx)} candidates")
                for i, raw in zip(idx, replies, strict=True):
                    out[i] = EvalResult.from_dict(raw)
            pending.sort()
        return [r for r in out if r is not None]

    def _actor_failed(self, actor: Any, exc: BaseException) -> None:
        """Drop ``actor`` from the pool when Ray reports it dead for good (restarts spent or killed without
        restart); a temporarily unavailable one (restarting) stays."""
        if isinstance(exc, self._errors.ActorUnavailableError):
            return
        if actor in self.actors:
            self.actors.remove(actor)
            self.lost.append(_first_line(exc))
            warnings.warn(f"a Ray evaluation actor died ({_first_line(exc)}); its candidates were re-queued, "
                          f"{len(self.actors)} actor(s) left", RuntimeWarning, stacklevel=4)

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.get(actor.close.remote())
                self.ray.kill(actor)
            except Exception:  # shutting down: a dead actor has nothing left to close
                pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"
