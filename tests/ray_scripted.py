"""The evaluator the real-Ray tests run inside RayEvaluator's actors (imported by Ray workers, so kept light).

It scores genomes like search_fakes.FakeEvaluator and reports where it ran (device, pid); a candidate's ``notes``
script what the actor does: "die-once:<marker>" ends the actor's process the first time (Ray restarts the actor
and re-runs the call), "kill-once:<marker>" kills the actor for good with ray.kill the first time (its shard must
be re-queued), and
"barrier:<dir>:<n>" makes promote_many wait until n actors are inside it at once (proof the calls overlap)."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avo_inductor.search.types import Candidate, EvalResult, Stage


def score(candidate: Candidate) -> float:
    """A deterministic per-candidate speedup, so a result can be matched to its candidate's genome."""
    assert candidate.genome is not None
    return 1.0 + candidate.genome.num_warps / 10 + candidate.genome.block_m / 1000


def _first_time(marker: str) -> bool:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class ScriptedEvaluator:
    def __init__(self, devices: Sequence[str], **kwargs: Any) -> None:
        self.device = devices[0]
        self.kwargs = kwargs

    @property
    def parallelism(self) -> int:
        return 1

    def _run(self, candidate: Candidate, stage: Stage) -> EvalResult:
        action, _, arg = candidate.notes.partition(":")
        if action == "die-once" and _first_time(arg):
            os._exit(3)  # the actor's process ends mid-batch, as on an OOM kill or a crashed driver
        if action == "kill-once" and _first_time(arg):
            import ray

            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            time.sleep(30)  # never returns: the kill lands first
        return EvalResult(candidate.id, True, stage, speedup=score(candidate),
                          extra={"device": self.device, "pid": os.getpid(), "kwargs": self.kwargs})

    def evaluate(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        return [self._run(c, Stage.PASSED) for c in candidates]

    def promote(self, candidate: Candidate) -> EvalResult:
        return self.promote_many([candidate])[0]

    def promote_many(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        for c in candidates:
            action, _, arg = c.notes.partition(":")
            if action == "barrier":
                folder, _, n = arg.rpartition(":")
                Path(folder, f"{os.getpid()}").touch()
                end = time.monotonic() + 60
                while len(list(Path(folder).iterdir())) < int(n):
                    if time.monotonic() > end:
                        return [EvalResult(x.id, False, Stage.PROMOTION, "barrier timed out: actors ran one "
                                           "after another") for x in candidates]
                    time.sleep(0.02)
        return [self._run(c, Stage.PROMOTION) for c in candidates]

    def close(self) -> None:
        pass
