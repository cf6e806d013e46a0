"""Shared benchmark plumbing: timing with L2 flush, CSV rows, bar plots, the GPU slug for result folders."""
from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def gpu_slug() -> str:
    from avo_inductor.spec import HardwareKey

    return HardwareKey.current().slug


def time_ms(fn: Callable[[], Any], warmup_ms: float = 100, rep_ms: float = 500, graph: bool = False) -> float:
    """Median milliseconds: triton.testing.do_bench (CUDA events, L2 flushed) on a GPU, wall clock on CPU.

    ``graph``: time CUDA-graph replays of the search's fixed call count instead (decode: launch overhead would
    otherwise be most of the time); a fn that cannot be captured raises rather than silently switching method.
    """
    if graph and torch.cuda.is_available():
        from avo_inductor.search.bench import GRAPH_CALLS, CapturedCalls

        device = torch.device("cuda", torch.cuda.current_device())
        return CapturedCalls(fn, GRAPH_CALLS, device).median_ms_per_call(device, reps=20)
    if torch.cuda.is_available():
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def bar_plot(path: Path, groups: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str, title: str) -> None:
    """Grouped bar chart, one bar per provider per case; skipped quietly when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot written")
        return
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(groups) * max(1, len(series)) / 3), 4.5))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [v or 0 for v in values], width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class Panel:
    """One sub-plot of :func:`bar_panels`: groups on x, one bar series per provider; ``hline`` e.g. 1.0 for speedups."""

    title: str
    groups: Sequence[str]
    series: dict[str, Sequence[float | None]]
    ylabel: str
    hline: float | None = None


def bar_panels(path: Path, panels: Sequence[Panel], title: str) -> None:
    """Several grouped bar charts stacked in one PNG: one file per run keeps a GPU session's outputs few.

    A provider keeps its colour in every panel ("avo/flex" takes flex's), so panels read together.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot written")
        return
    if not panels:
        return
    colors = _colors(panels, plt.get_cmap("tab10").colors)
    widest = max(len(p.groups) * max(1, len(p.series)) for p in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(min(24, max(9, 0.2 * widest)), 4.2 * len(panels)),
                             squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        _draw_bars(ax, panel, colors)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _base_name(series_name: str) -> str:
    return series_name.split("/", 1)[1] if series_name.startswith("avo/") else series_name


def _colors(panels: Sequence[Panel], palette: Sequence[Any]) -> dict[str, Any]:
    names = list(dict.fromkeys(_base_name(n) for p in panels for n in p.series))
    return {n: palette[i % len(palette)] for i, n in enumerate(names)}


def _draw_bars(ax: Any, panel: Panel, colors: dict[str, Any]) -> None:
    width = 0.8 / max(len(panel.series), 1)
    for i, (name, values) in enumerate(panel.series.items()):
        xs = [g + i * width for g in range(len(panel.groups))]
        ax.bar(xs, [v or 0 for v in values], width, label=name, color=colors.get(_base_name(name)))
    if panel.hline is not None:
        ax.axhline(panel.hline, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(panel.groups))])
    ax.set_xticklabels(panel.groups, rotation=25, ha="right", fontsize=7)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title, fontsize=10)
    ax.legend(fontsize=7, ncol=4)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], na_width: int | None = None) -> None:
    """Aligned text table; ``na_width`` truncates "n/a: reason" cells so the table stays readable (CSV keeps them)."""
    def cell(v: Any) -> str:
        text = _fmt(v)
        if na_width is None or not text.startswith("n/a") or len(text) <= na_width:
            return text
        return text[: na_width - 1] + "~"

    widths = {c: max([len(c), *(len(cell(r.get(c))) for r in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return "-" if v is None else str(v)
