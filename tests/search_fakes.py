"""In-test stand-ins for the search's plug points: a synthetic-score evaluator and a fixed default genome.

The synthetic landscape has one best genome (TARGET); speedup falls by 0.15 per knob that differs, so a
working search must climb to it. Seeded and pure, so tests are deterministic.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.search.types import Candidate, EvalResult, Stage
from avo_inductor.spec import AttentionSpec, HardwareKey, SoftwareKey

TARGET = {"block_m": 64, "block_n": 32, "num_warps": 8, "num_stages": 3, "exp2": True, "lazy_rescale": True}
SPEC = AttentionSpec(2, 4, 4, 256, 256, 64, causal=True)
HW = HardwareKey("nvidia", "fake-gpu", (9, 0), 132)
SW = SoftwareKey("3.9.0", "2.13.0")


def synthetic_speedup(genome: KernelGenome) -> float:
    return 2.0 - 0.15 * sum(getattr(genome, k) != v for k, v in TARGET.items())


def default_genome(spec: AttentionSpec, hardware: Any = None) -> KernelGenome:
    return KernelGenome(block_m=16, block_n=16, num_warps=4, num_stages=1, exp2=False)


class FakeEvaluator:
    """Scores genomes with ``synthetic_speedup`` times ``scale``; genomes with block_m == 256 "fail to compile".

    ``fallback_factor``: the fallback's time over the best built-in's, so the speedup over the fallback is the
    speedup times it (1.0: the fallback is the best built-in, as for plain causal attention)."""

    def __init__(self, delay_s: float = 0.0, spread: float = 0.02, promote_speedup: float | None = None,
                 scale: float = 1.0, fallback_factor: float = 1.0) -> None:
        self.delay_s, self.spread, self.promote_speedup, self.scale = delay_s, spread, promote_speedup, scale
        self.fallback_factor = fallback_factor
        self.calls: list[list[str]] = []
        self.promoted: list[str] = []

    def _one(self, c: Candidate) -> EvalResult:
        assert c.genome is not None
        if c.genome.block_m == 256:
            return EvalResult(c.id, False, Stage.COMPILE, message="out of shared memory")
        speedup = synthetic_speedup(c.genome) * self.scale
        return EvalResult(c.id, True, Stage.PASSED, speedup=speedup, spread=self.spread, median_ms=1.0 / speedup,
                          baseline_ms=1.0, baseline="sdpa", speedup_vs_fallback=speedup * self.fallback_factor,
                          fallback_ms=self.fallback_factor)

    def evaluate(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        self.calls.append([c.id for c in candidates])
        if self.delay_s:
            time.sleep(self.delay_s)
        return [self._one(c) for c in candidates]

    @property
    def parallelism(self) -> int:
        return 1

    def promote(self, candidate: Candidate) -> EvalResult:
        self.promoted.append(candidate.id)
        r = self._one(candidate)
        if self.promote_speedup is not None:
            r = EvalResult(r.candidate_id, r.ok, r.stage, speedup=self.promote_speedup, spread=self.spread,
                           speedup_vs_fallback=self.promote_speedup * self.fallback_factor)
        return r

    def promote_many(self, candidates: Sequence[Candidate]) -> list[EvalResult]:
        return [self.promote(c) for c in candidates]

    def close(self) -> None:
        pass


def tiny_sdpa_model() -> tuple[Any, tuple[Any, ...]]:
    """``--model search_fakes:tiny_sdpa_model``: one causal SDPA site (B=1, H=4, N=32, D=16)."""
    import torch
    import torch.nn.functional as F

    class Model(torch.nn.Module):
        def forward(self, q: Any, k: Any, v: Any) -> Any:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True) * 2

    return Model(), tuple(torch.randn(1, 4, 32, 16) for _ in range(3))


class GpuReportingEvaluator(FakeEvaluator):
    """FakeEvaluator whose passing results say which GPU timed them, as SandboxedEvaluator's do."""

    def __init__(self, hardware: HardwareKey, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hardware = hardware

    def _one(self, c: Candidate) -> EvalResult:
        res = super()._one(c)
        return dataclasses.replace(res, extra={**res.extra, "hardware": self.hardware.to_dict()}) if res.ok else res
