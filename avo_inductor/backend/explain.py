"""explain(model, *args, **kwargs): which attention sites the avo backend finds and what it would do."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from ..settings import get_settings
from .graph_pass import run_avo_pass
from .report import ERROR, SiteReport, render_table


@dataclass
class ExplainReport:
    """One row per attention site found while running the model once."""

    sites: list[SiteReport] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self) -> Iterator[SiteReport]:
        return iter(self.sites)

    def __getitem__(self, i: int) -> SiteReport:
        return self.sites[i]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.sites]

    def __str__(self) -> str:
        return "\n".join(s.summary() for s in self.sites) or "no attention sites found"

    def print(self, console: Any = None) -> None:
        from rich.console import Console

        (console or Console()).print(render_table(self.sites))


def _explaining_backend(rows: list[SiteReport]) -> Callable[..., Any]:
    def backend(gm: fx.GraphModule, example_inputs: Sequence[Any], **_: Any) -> Callable[..., Any]:
        settings = get_settings()
        try:
            rows.extend(run_avo_pass(gm, settings, dry_run=True).sites)
        except Exception as exc:  # where a compile would warn and fall back, explain() reports the failure
            if settings.strict:
                raise
            rows.append(SiteReport(module_path="", pattern="-", action=ERROR,
                                   reason=f"attention pass failed: {type(exc).__name__}: {exc}"))
        return gm.forward  # run eagerly: explain() must not pay for an Inductor compile

    return backend


def explain(model: Callable[..., Any], *args: Any, quiet: bool = False, **kwargs: Any) -> ExplainReport:
    """Trace ``model(*args, **kwargs)`` once and report every attention site (no store writes, no rewrite).

    The grad mode and train/eval mode in effect decide ``needs_grad`` and dropout, as they would for a compile.
    Prints a table unless ``quiet``; returns the ExplainReport either way.
    """
    rows: list[SiteReport] = []
    compiled = torch.compile(model, backend=_explaining_backend(rows))
    with torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=4096):
        compiled(*args, **kwargs)
    report = ExplainReport(rows)
    if not quiet:
        report.print()
    return report
