"""SiteReport rows: what the avo pass did with each attention site, shared by explain() and AVO_LOG."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..spec import AttentionSpec

logger = logging.getLogger("avo_inductor")

# Actions the pass can take on a site.
AVO = "avo"            # replaced by the avo op running a tuned kernel
SDPA = "sdpa"          # hand-written attention rewritten to SDPA (fallback on a miss)
KEPT = "kept"          # left as it was (already SDPA, on a miss or where avo cannot run)
SKIPPED = "skipped"    # not understood: left untouched
ERROR = "error"        # an internal failure: left untouched, warned once


@dataclass(frozen=True)
class SiteReport:
    """One attention site: where it is, what it is, and what the pass did with it."""

    module_path: str
    pattern: str
    action: str
    spec: AttentionSpec | None = None
    status: str = "-"  # hit | miss | -
    kernel_id: str | None = None
    speedup: float | None = None
    layer: str | None = None
    reason: str = ""
    tuned_at: AttentionSpec | None = None  # a class hit: the shape its record was tuned at (None: exact hit)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["spec"] = self.spec.to_dict() if self.spec else None
        out["tuned_at"] = self.tuned_at.to_dict() if self.tuned_at else None
        return out

    @property
    def store_status(self) -> str:
        """``status``, or ``hit (class, tuned at <spec text>)`` for a class hit."""
        return f"{self.status} (class, tuned at {self.tuned_at.to_text()})" if self.tuned_at else self.status

    def summary(self) -> str:
        spec = self.spec.short() if self.spec else "-"
        speed = f" {self.speedup:.2f}x" if self.speedup else ""
        kid = f" kernel {self.kernel_id}" if self.kernel_id else ""
        why = f" ({self.reason})" if self.reason else ""
        return (f"{self.module_path or '<root>'} [{self.pattern}] {spec}: {self.action}/{self.store_status}{kid}"
                f"{speed}{why}")


def class_hit_note(metrics: Any, in_background: bool = False) -> str:
    """What explain() says of a class hit: the record's margin over the fallback where it was tuned (``at least``
    when only its speedup over the best built-in is known: KernelMetrics.fallback_margin); ``in_background``: its
    check at this shape ran while Inductor compiled (backend/deferred.py)."""
    bound = "" if metrics.speedup_vs_fallback is not None else "at least "
    how = "verified at this shape while Inductor compiled" if in_background else "verified at this shape"
    return f"{bound}{metrics.fallback_margin or 0:.2f}x the fallback where tuned; {how}"


def log_sites(sites: Iterable[SiteReport]) -> None:
    """AVO_LOG=1: one INFO line per site at compile time."""
    for site in sites:
        logger.info("avo site: %s", site.summary())


def render_table(sites: list[SiteReport], title: str = "avo attention sites") -> Any:
    """A rich Table of the sites (printed by explain()); the pattern and full spec are in ``to_dict()``."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in ("module", "B,H,HKV,Nq,Nk,D dtype mask", "store", "action", "kernel", "speedup", "note"):
        table.add_column(column, overflow="fold")
    for s in sites:
        table.add_row(
            s.module_path or "<root>", s.spec.short() if s.spec else "-", s.store_status, s.action,
            s.kernel_id or "-", f"{s.speedup:.2f}x" if s.speedup else "-", s.reason or "",
        )
    return table
