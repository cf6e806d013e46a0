"""Records and plug points shared by the search engine, its operators and its evaluator."""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Protocol

from ..kernels.genome import KernelGenome
from ..spec import AttentionSpec


class Stage(str, enum.Enum):
    """Evaluator cascade stages, in order; a failure records the stage it stopped at."""

    STATIC = "static"
    COMPILE = "compile"
    CORRECT_SMALL = "correct_small"
    CORRECT_TARGET = "correct_target"
    TIMING = "timing"
    PLAUSIBILITY = "plausibility"
    PROMOTION = "promotion"
    TIMEOUT = "timeout"
    CRASH = "crash"
    PASSED = "passed"


@dataclass(frozen=True)
class Candidate:
    """A kernel proposed by a variation operator.

    Either ``genome`` (rendered by the template) or free-form ``source`` (agent) with its ``launch`` config;
    when both are given the source wins and the genome is kept as its ancestry's knobs.
    """

    id: str
    spec: AttentionSpec
    genome: KernelGenome | None = None
    source: str | None = None
    entry_point: str = "attn_fwd"
    bwd_entry_point: str | None = None
    launch: dict[str, Any] = field(default_factory=dict)
    parent_ids: tuple[str, ...] = ()
    operator: str = "seed"
    island: int = 0
    generation: int = 0
    diff: str = ""
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["spec"] = self.spec.to_dict()
        out["genome"] = self.genome.to_dict() if self.genome else None
        out["parent_ids"] = list(self.parent_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        data = dict(data)
        data["spec"] = AttentionSpec.from_dict(data["spec"])
        data["genome"] = KernelGenome.from_dict(data["genome"]) if data.get("genome") else None
        data["parent_ids"] = tuple(data.get("parent_ids", ()))
        return cls(**data)


@dataclass(frozen=True)
class EvalResult:
    """Outcome of the cascade for one candidate. ``ok`` only when every stage passed.

    score: higher is better (speedup over the best built-in backend timed in the same worker).
    speedup_vs_fallback / fallback_ms: over the site's fallback (bench.FALLBACK), timed in the same worker;
    promotion decides on it (search/promotion.py).
    """

    candidate_id: str
    ok: bool
    stage: Stage
    message: str = ""
    median_ms: float | None = None
    baseline_ms: float | None = None
    baseline: str | None = None
    speedup: float | None = None
    tflops: float | None = None
    max_abs_err: float | None = None
    rel_err: float | None = None
    spread: float | None = None
    duration_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    speedup_vs_fallback: float | None = None
    fallback_ms: float | None = None

    @property
    def score(self) -> float:
        return self.speedup if (self.ok and self.speedup is not None) else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stage"] = self.stage.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        data = dict(data)
        data["stage"] = Stage(data["stage"])
        return cls(**data)


class VariationOperator(Protocol):
    """Makes children from parents. ``name`` is recorded as the child's operator."""

    name: str

    def propose(self, parents: Sequence[tuple[Candidate, EvalResult | None]], n: int, seed: int) -> list[Candidate]:
        ...


class Evaluator(Protocol):
    """Runs the cascade on candidates (in isolated workers) and returns one result per candidate, in order.

    Every method here is called directly by the engine, promotion, the runner or the Ray driver (no probing):
    ``parallelism`` candidates are evaluated at once; ``promote`` / ``promote_many`` re-check winners with new
    seeds, held-out shapes and stricter timing before anything is stored; ``close`` releases workers."""

    @property
    def parallelism(self) -> int:
        ...

    def evaluate(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        ...

    def promote(self, candidate: Candidate) -> EvalResult:
        ...

    def promote_many(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        ...

    def close(self) -> None:
        ...
