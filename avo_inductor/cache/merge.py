"""``cache merge``: several bundles into one, the best record per key, for shipping one folder per GPU.

Campaigns run in slices on whatever GPU is lent, each exporting its promoted records; a deployment (and the
package's own ``cache/``) wants one bundle per hardware target. Every source passes the same static checks as an
import (manifest, sha256 of every file, signature policy, the trust tier's gate: ``verify_bundle``) before anything
is written; a refused source refuses the merge. Correctness is not re-checked here: whoever imports or reads the
merged bundle verifies it as any other (``cache import``, first use). Per store key the record with the higher
speedup over the best built-in (its quality figure, measured beside that built-in in its own run) is kept; a tie
goes to the newer record.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact import KernelRecord
from ..settings import Settings
from .bundle import BundleRefused, BundleReport, verify_bundle, write_bundle_to
from .manifest import Manifest


@dataclass(frozen=True)
class MergeChoice:
    """One key of the merged bundle: the record kept (and which source it came from), the ones it replaced."""

    key: str
    kernel_id: str
    source: str
    speedup: float | None
    replaced: tuple[str, ...] = ()  # "kernel_id from SOURCE (speedup)" of each record not kept


@dataclass
class MergeReport:
    out: str
    sources: list[BundleReport]
    choices: list[MergeChoice] = field(default_factory=list)
    manifest: Manifest | None = None


def _rank(record: KernelRecord) -> tuple[float, float]:
    return (record.metrics.speedup or 0.0, record.created_at)


def _describe(record: KernelRecord, source: str) -> str:
    speed = f"{record.metrics.speedup:.3f}x" if record.metrics.speedup else "no speedup recorded"
    return f"{record.kernel_id} from {source} ({speed})"


def choose_records(reports: Sequence[BundleReport]) -> list[MergeChoice]:
    """The best record per key over verified ``reports`` (see the module docstring); the same kernel twice is one."""
    found: dict[str, list[tuple[KernelRecord, str]]] = {}
    for report in reports:
        for key, record in report.records.items():
            found.setdefault(key, []).append((record, report.path))
    choices = []
    for key in sorted(found):
        ranked = sorted(found[key], key=lambda item: _rank(item[0]), reverse=True)
        best, source = ranked[0]
        replaced = tuple(_describe(r, s) for r, s in ranked[1:] if r.kernel_id != best.kernel_id)
        choices.append(MergeChoice(key, best.kernel_id, source, best.metrics.speedup, replaced))
    return choices


def merge_bundles(sources: Sequence[str | Path], out: str | Path, *, trusted_keys: Any = None,
                  require_signed: bool | None = None, sign_key: str | Path | None = None,
                  creator: str | None = None, settings: Settings | None = None) -> MergeReport:
    """Merge bundle folders or archives ``sources`` into ``out`` (a new folder or ``*.tar.gz``; optionally signed).

    Raises BundleRefused (naming the first refused source and every problem in it) before writing anything, and
    ValueError without sources."""
    if not sources:
        raise ValueError("merge needs at least one source bundle")
    reports = [verify_bundle(src, trusted_keys, require_signed, settings=settings) for src in sources]
    report = MergeReport(str(out), reports)
    for source in reports:
        if not source.ok:
            raise BundleRefused(source)
        if not source.records:
            raise BundleRefused(BundleReport(source.path, ["bundle holds no records"]))
    report.choices = choose_records(reports)
    by_source = {r.path: r for r in reports}
    records = [by_source[c.source].records[c.key] for c in report.choices]
    report.manifest = write_bundle_to(out, records, creator, sign_key)
    return report
