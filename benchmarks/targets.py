"""Issue 7's performance targets and their PASS/MISS verdicts, as pure functions over benchmark rows.

Kept apart from the timing code (no torch, no GPU) so the verdict logic is unit-tested on synthetic numbers: a
benchmark that times correctly but judges wrongly would report a target met that is not.

A row is one spec's result from ``benchmarks/attention.py``: ``case`` (canonical "B,H,HKV,NQ,NK,D,mask"),
``mode`` ("fwd" or "train"), ``avo kernel`` (the label avo ran under: "avo" or "avo-untuned"), ``avo ok``
(output within tolerance of the float64 reference; None when unchecked) and ``<provider> ms`` for every provider that ran. Ratios are
always time ratios, so they do not depend on how FLOPs are counted.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Baseline groups. "cuDNN" is SDPA's default on torch 2.11 / H100; the faster of default and forced cuDNN is
# used so a target is never met against a slower-than-available baseline.
CUDNN = ("sdpa-default", "sdpa-cudnn")
FLEX = ("flex",)
# SDPA has no sliding window: every SDPA variant gets the materialised mask, none can skip blocks.
DENSE_MASK_SDPA = ("sdpa-default", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "sdpa-dense-mask")
HBM_FLOOR = ("hbm-floor",)

CORE_CASES = (
    "4,32,32,1024,1024,128,none", "4,32,32,4096,4096,128,none", "2,32,32,8192,8192,128,none",
    "4,32,32,4096,4096,128,causal", "2,32,32,8192,8192,128,causal", "4,32,8,4096,4096,128,causal",
    "8,16,16,2048,2048,64,none", "8,16,16,2048,2048,64,causal", "16,12,12,1024,1024,64,causal",
)


@dataclass(frozen=True)
class Target:
    """One target. ``speedup``: baseline_ms / avo_ms >= threshold. ``floor``: avo_ms / floor_ms <= threshold.

    aggregate: "geomean" or "worst" (the least favourable case) over ``cases``; a one-case target is either.
    """

    name: str
    cases: tuple[str, ...]
    baselines: tuple[str, ...]
    threshold: float
    mode: str = "fwd"
    aggregate: str = "worst"
    kind: str = "speedup"


def issue7_targets() -> list[Target]:
    """The targets of ANCHORS.md / issue 7 that the kernel-level benchmark can measure."""
    targets = [
        Target("dense fwd geomean vs cuDNN", CORE_CASES, CUDNN, 1.00, aggregate="geomean"),
        Target("dense fwd worst vs cuDNN", CORE_CASES, CUDNN, 0.95, aggregate="worst"),
        Target("dense fwd geomean vs Flex", CORE_CASES, FLEX, 1.30, aggregate="geomean"),
    ]
    for case in ("4,32,32,4096,4096,128,bias", "8,16,16,2048,2048,64,padding", "8,16,16,2048,2048,64,alibi"):
        targets.append(Target(f"{case.rsplit(',', 1)[1]} vs Flex", (case,), FLEX, 1.15))
    targets.append(Target("window1024 vs dense-mask SDPA", ("4,32,32,4096,4096,128,window1024",), DENSE_MASK_SDPA, 4.0))
    for case in ("4,32,32,4096,4096,128,causal", "8,16,16,2048,2048,64,causal"):
        targets.append(Target(f"train {case} vs cuDNN", (case,), CUDNN, 1.0, mode="train"))
    for case in ("8,32,8,1,8192,128,none", "1,32,8,1,32768,128,none", "32,32,8,1,4096,128,none"):
        targets.append(Target(f"decode {case} vs HBM floor", (case,), HBM_FLOOR, 1.15, kind="floor"))
    return targets


def _ms(value: Any) -> float | None:
    """A positive finite time, else None (cells that failed hold "n/a: ..." text)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def case_ratio(row: dict[str, Any], target: Target) -> float | str:
    """The target's ratio on one row, or the reason there is none (a MISS must never hide a failed cell)."""
    label = row.get("avo kernel") or "avo"
    avo = _ms(row.get(f"{label} ms"))
    if avo is None:
        return f"{label} did not run"
    ok = row.get("avo ok")
    if ok in (False, "False"):
        return f"{label} output fails the float64 check"
    if ok not in (True, "True"):  # the check itself failed to run (e.g. the reference ran out of memory)
        return f"{label} output was not checked against float64"
    bases = [b for b in (_ms(row.get(f"{name} ms")) for name in target.baselines) if b is not None]
    if not bases:
        return f"no baseline ({'/'.join(target.baselines)}) ran"
    best = min(bases)
    return best / avo if target.kind == "speedup" else avo / best


def _aggregate(values: Sequence[float], how: str, kind: str) -> float:
    if how == "geomean":
        return math.exp(sum(math.log(v) for v in values) / len(values))
    return min(values) if kind == "speedup" else max(values)


def _passes(value: float, target: Target) -> bool:
    return value >= target.threshold if target.kind == "speedup" else value <= target.threshold


def missed_by(value: float, target: Target) -> float:
    """How much faster avo still has to get, as a fraction (0.12 = 12% faster); 0 when the target is met."""
    need = target.threshold / value if target.kind == "speedup" else value / target.threshold
    return max(0.0, need - 1.0)


def _rows_for(rows: Iterable[dict[str, Any]], target: Target) -> dict[str, dict[str, Any]]:
    return {r["case"]: r for r in rows if r.get("mode", "fwd") == target.mode and r.get("case") in target.cases}


def evaluate_target(rows: Sequence[dict[str, Any]], target: Target) -> dict[str, Any]:
    """One line of the targets table. N/A (not MISS) when any case lacks a number: a partial geomean proves nothing."""
    found = _rows_for(rows, target)
    ratios: dict[str, float] = {}
    problems: list[str] = []
    for case in target.cases:
        r = case_ratio(found[case], target) if case in found else "not measured"
        if isinstance(r, str):
            problems.append(f"{case}: {r}")
        else:
            ratios[case] = r
    sign = ">=" if target.kind == "speedup" else "<="
    line: dict[str, Any] = {"target": target.name, "mode": target.mode, "cases": len(target.cases),
                            "threshold": f"{sign} {target.threshold:.2f}x", "measured": None, "status": "N/A",
                            "missed by": None, "note": ""}
    if ratios:
        value = _aggregate(list(ratios.values()), target.aggregate, target.kind)
        line["measured"] = round(value, 4)
        if not problems:
            line["status"] = "PASS" if _passes(value, target) else "MISS"
            gap = missed_by(value, target)
            line["missed by"] = f"{gap * 100:.1f}%" if gap > 0 else None
    notes = _notes(found, ratios, target) + problems
    line["note"] = "; ".join(notes)
    return line


def _notes(found: dict[str, dict[str, Any]], ratios: dict[str, float], target: Target) -> list[str]:
    """Worst case of a multi-case target and how many cases ran an untuned avo kernel (honest labelling)."""
    notes = []
    if len(ratios) > 1:
        worst = _aggregate(list(ratios.values()), "worst", target.kind)
        case = next(c for c, v in ratios.items() if v == worst)
        notes.append(f"worst {case}: {worst:.3f}x")
    untuned = sum(1 for c in ratios if found[c].get("avo kernel") == "avo-untuned")
    if untuned:
        notes.append(f"avo-untuned in {untuned}/{len(ratios)}")
    if len(ratios) < len(target.cases):
        notes.append(f"partial: {len(ratios)}/{len(target.cases)} cases")
    return notes


def evaluate_targets(rows: Sequence[dict[str, Any]], targets: Sequence[Target] | None = None,
                     only_present: bool = True) -> list[dict[str, Any]]:
    """The targets table. ``only_present``: drop targets none of whose cases this run measured (other suites)."""
    out = []
    for target in targets if targets is not None else issue7_targets():
        if only_present and not _rows_for(rows, target):
            continue
        out.append(evaluate_target(rows, target))
    return out
