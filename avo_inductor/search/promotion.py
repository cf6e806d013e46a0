"""Promotion: re-evaluate a search winner with fresh seeds and turn it into a KernelRecord if it holds up.

A candidate's search score came from one evaluation; noise and lucky inputs make some winners fake
(ANTICHEAT.md: "noise counted as speedup"). So the winner is evaluated again through the evaluator's
``promote`` / ``promote_many`` (new seeds, held-out shapes, stricter timing; see types.Evaluator) and is stored
only if it passes and beats the site's fallback (what the compiled model runs without it: bench.FALLBACK) by more
than the spread measured in that same evaluation. Beating FlexAttention or the best SDPA backend is not required:
a window kernel 4x faster than the dense-mask SDPA a model would run is worth storing even where Flex is faster
still, since a miss never runs Flex. The speedup over the best built-in is kept in the record as its quality figure.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..artifact import KernelMetrics, KernelRecord
from ..spec import HardwareKey, SoftwareKey
from .types import Candidate, EvalResult, Evaluator, Stage


def promotion_eval(evaluator: Evaluator, candidate: Candidate) -> EvalResult:
    """Re-evaluate ``candidate`` with the evaluator's ``promote`` (see module docstring)."""
    result = evaluator.promote(candidate)
    if result.candidate_id != candidate.id:
        raise RuntimeError(f"evaluator answered for {result.candidate_id!r}, asked about {candidate.id!r}")
    return result


def promotion_decision(result: EvalResult, require_speedup: bool = True, min_gain: float = 0.0) -> tuple[bool, str]:
    """(promote?, reason). The decision is on ``speedup_vs_fallback``; ``spread`` is read as the relative
    run-to-run spread of that comparison's timings (e.g. 0.02 = 2 %), and the speedup must clear
    ``1 + max(spread, min_gain)``. The speedup over the best built-in is only reported. Without
    ``require_speedup`` (CPU interpreter, where timings say nothing about a GPU) passing the cascade is enough."""
    if not result.ok:
        return False, f"re-evaluation failed at {result.stage.value}: {result.message}"
    if not require_speedup:
        return True, "passed re-evaluation (speedup not required)"
    gain = result.speedup_vs_fallback
    if gain is None:
        return False, "re-evaluation reported no speedup over the fallback (the fallback was not timed)"
    margin = max(result.spread or 0.0, min_gain)
    builtin = "" if result.speedup is None else f"; {result.speedup:.3f}x the best built-in ({result.baseline})"
    if gain - 1.0 <= margin:
        return False, (f"speedup {gain:.3f}x over the fallback does not beat it by more than the spread "
                       f"({margin:.3f}){builtin}")
    return True, f"speedup {gain:.3f}x over the fallback > 1 + spread {margin:.3f}{builtin}"


def promotion_eval_batch(evaluator: Evaluator, candidates: list[Candidate]) -> Iterator[EvalResult]:
    """``promote_many`` over several winners, ``parallelism`` at a time (one winner per spec: a 19-spec campaign
    re-checked one by one left 3 of 4 GPUs idle for minutes), yielding each batch's results before the next batch
    runs: the caller records and stores them meanwhile, so a device call that ends mid-promotion keeps the winners
    already re-measured (session 14's H100 slice lost every re-measurement that way). A batch that raises becomes failed
    results for its candidates; the others still count."""
    step = max(1, int(evaluator.parallelism))
    for i in range(0, len(candidates), step):
        batch = candidates[i:i + step]
        try:
            results = list(evaluator.promote_many(batch))
            if [r.candidate_id for r in results] != [c.id for c in batch]:
                raise RuntimeError(f"evaluator answered for {[r.candidate_id for r in results]}, "
                                   f"asked about {[c.id for c in batch]}")
        except Exception as exc:
            results = [failed_result(c, exc) for c in batch]
        yield from results


def build_record(candidate: Candidate, result: EvalResult, hardware: HardwareKey,
                 software: SoftwareKey) -> KernelRecord:
    """KernelRecord for a promoted candidate: a genome candidate becomes a template-tier record
    (``kernels.tiers.template_record``), a source candidate a source-tier record holding its text verbatim.

    Hardware/software keys reported by the evaluator (``result.extra["hardware"|"software"]``, as dicts) win
    over the driver's: with Ray the driver may not have the GPU the kernel was timed on.
    """
    extra = result.extra or {}
    if isinstance(extra.get("hardware"), dict):
        hardware = HardwareKey.from_dict(extra["hardware"])
    if isinstance(extra.get("software"), dict):
        software = SoftwareKey.from_dict(extra["software"])
    metrics = KernelMetrics(median_ms=result.median_ms, tflops=result.tflops, speedup=result.speedup,
                            baseline=result.baseline, baseline_ms=result.baseline_ms, max_abs_err=result.max_abs_err,
                            rel_err=result.rel_err, bwd_median_ms=extra.get("bwd_median_ms"),
                            bwd_speedup=extra.get("bwd_speedup"), speedup_vs_fallback=result.speedup_vs_fallback,
                            fallback_ms=result.fallback_ms)
    provenance: dict[str, Any] = dict(metrics=metrics, lineage_id=candidate.id, parent_ids=candidate.parent_ids,
                                      operator=candidate.operator, verified_software=(software,))
    if candidate.source is not None:
        return KernelRecord(spec=candidate.spec, hardware=hardware, software=software, source=candidate.source,
                            entry_point=candidate.entry_point, bwd_entry_point=candidate.bwd_entry_point,
                            launch=dict(candidate.launch),
                            genome=candidate.genome.to_dict() if candidate.genome else None, **provenance)
    if candidate.genome is None:
        raise ValueError(f"candidate {candidate.id} has neither genome nor source")
    from ..kernels.tiers import template_record

    return template_record(candidate.genome, candidate.spec, hardware, software, **provenance)


def failed_result(candidate: Candidate, exc: BaseException) -> EvalResult:
    """An EvalResult for a promotion attempt that raised, so the failure is recorded as data."""
    return EvalResult(candidate_id=candidate.id, ok=False, stage=Stage.PROMOTION,
                      message=f"{type(exc).__name__}: {exc}")
