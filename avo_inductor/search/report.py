"""``search report --out DIR``: one run's lineage as a self-contained HTML page plus PNG charts (matplotlib).

The data comes from ``lineage_data`` (pure); this module only draws and writes. Every string from the database
(kernel ids, diffs, error and agent text) is untrusted and HTML-escaped. matplotlib is an optional dependency
(the ``dev`` extra) imported only when a report is written, through its object API on the Agg canvas, so no
global pyplot backend state is touched.
"""
from __future__ import annotations

import argparse
import html
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lineage_data import FamilyTree, IslandGrid, ReportData, SpecProgress, StageFailures, load_report_data

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1300px;color:#1d232b;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5dae1;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#5b6675}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d5dae1;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f1f4f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.fail{color:#b42318}td.ok{color:#067647}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-height:9em;overflow:auto}
img{max-width:100%;height:auto;border:1px solid #e4e7ec;margin:6px 0}
nav a{margin-right:14px}summary{cursor:pointer;color:#1f5fbf;margin:4px 0}
"""


class MissingDependency(RuntimeError):
    """matplotlib is not installed; the CLI turns this into one line and exit status 1."""


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote: the page and every image it references (all inside ``out_dir``)."""

    out_dir: Path
    html: Path
    images: tuple[Path, ...]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependency("the report needs matplotlib: pip install 'avo_inductor[dev]' "
                                "(or pip install matplotlib)") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}x"


# ---- charts ----------------------------------------------------------------------------------------
def _plot_progress(progress: tuple[SpecProgress, ...], path: Path) -> None:
    fig = _figure(11, 4.8)
    ax = fig.add_subplot()
    end = max((p.t_s for sp in progress for p in sp.points), default=0.0)
    unit, div = ("minutes", 60.0) if end > 600 else ("seconds", 1.0)
    for i, sp in enumerate(progress):
        color = f"C{i % 10}"
        ok = [p for p in sp.points if p.ok]
        ax.scatter([p.t_s / div for p in ok], [p.score for p in ok], s=10, alpha=0.3, color=color)
        steps = list(sp.best_so_far)
        if steps:
            xs = [t / div for t, _ in steps] + [end / div]
            ys = [b for _, b in steps] + [steps[-1][1]]
            ax.step(xs, ys, where="post", color=color, linewidth=2, label=f"{sp.label} (best {sp.best:.3f}x)")
    ax.axhline(1.0, color="#888", linestyle="--", linewidth=1)
    ax.set_xlabel(f"{unit} since the run started")
    ax.set_ylabel("speedup over the best built-in (x)")
    ax.set_title("best speedup over time (dots: every passing candidate)")
    if any(sp.best_so_far for sp in progress):
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.savefig(path)


def _plot_tree(tree: FamilyTree, path: Path) -> None:
    by_gen: dict[int, list[str]] = {}
    for n in sorted(tree.nodes, key=lambda n: (n.generation, n.depth, n.candidate_id)):
        by_gen.setdefault(n.generation, []).append(n.candidate_id)
    pos = {cid: (gen, i - (len(ids) - 1) / 2) for gen, ids in by_gen.items() for i, cid in enumerate(ids)}
    main = {n.candidate_id for n in tree.main_line}
    rows = max(len(ids) for ids in by_gen.values())
    fig = _figure(max(7.0, 1.6 * len(by_gen) + 2), max(2.4, 0.55 * rows + 1.6))
    ax = fig.add_subplot()
    for n in tree.nodes:
        for k, parent in enumerate(n.parent_ids):
            if parent in pos:
                on_main = n.candidate_id in main and parent in main and k == 0
                (x0, y0), (x1, y1) = pos[parent], pos[n.candidate_id]
                ax.plot([x0, x1], [y0, y1], color="#1f5fbf" if on_main else "#b0b7c3",
                        linewidth=2.2 if on_main else 1, linestyle="-" if k == 0 else ":", zorder=1)
    passed = [n for n in tree.nodes if n.ok]
    failed = [n for n in tree.nodes if not n.ok]
    sc = ax.scatter([pos[n.candidate_id][0] for n in passed], [pos[n.candidate_id][1] for n in passed],
                    c=[n.score or 0.0 for n in passed], cmap="viridis", s=140, zorder=2, edgecolors="#333")
    ax.scatter([pos[n.candidate_id][0] for n in failed], [pos[n.candidate_id][1] for n in failed],
               marker="X", color="#d92d20", s=120, zorder=2)
    for n in tree.nodes:
        x, y = pos[n.candidate_id]
        text = f"{n.operator}\n{_score(n.score) if n.ok else n.stage or n.operator}"
        ax.annotate(text, (x, y), xytext=(0, 11), textcoords="offset points", ha="center", fontsize=7,
                    fontweight="bold" if n.candidate_id in main else "normal")
    if passed:
        fig.colorbar(sc, ax=ax, label="speedup (x)", shrink=0.8)
    ax.set_xticks(sorted(by_gen))
    ax.set_xlabel("generation")
    ax.set_yticks([])
    ax.set_ylim(-rows / 2 - 0.5, rows / 2 + 0.8)
    ax.set_xlim(min(by_gen) - 0.6, max(by_gen) + 0.6)
    ax.set_title(f"ancestors of {tree.winner_id}", fontsize=9)
    fig.savefig(path)


def _plot_grid(grid: IslandGrid, path: Path) -> None:
    import numpy as np

    values = np.full((grid.islands, len(grid.cells)), np.nan)
    for cell in grid.elites:
        values[cell.island % grid.islands, grid.cells.index(cell.cell)] = cell.score
    fig = _figure(max(6.5, 0.8 * len(grid.cells) + 2.5), max(2.2, 0.6 * grid.islands + 1.6))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if im.norm(v) < 0.6 else "black")  # viridis is dark below ~0.6
    ax.set_xticks(range(len(grid.cells)), grid.cells, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(grid.islands), [f"island {i}" for i in range(grid.islands)], fontsize=8)
    ax.set_title("best speedup per island and trait cell", fontsize=9)
    fig.colorbar(im, ax=ax, label="speedup (x)")
    fig.savefig(path)


def _plot_failures(failures: tuple[StageFailures, ...], path: Path) -> None:
    fig = _figure(8, max(2.0, 0.45 * len(failures) + 1.2))
    ax = fig.add_subplot()
    names = [f.stage for f in failures][::-1]
    counts = [f.count for f in failures][::-1]
    ax.barh(names, counts, color="#d92d20")
    for y, c in enumerate(counts):
        ax.text(c, y, f" {c}", va="center", fontsize=9)
    ax.set_xlabel("failed candidates")
    ax.set_title("failures by cascade stage (in cascade order)")
    ax.set_xlim(0, max(counts) * 1.15)
    fig.savefig(path)


# ---- HTML -------------------------------------------------------------------------------------------
def _img(name: str, alt: str) -> str:
    return f'<img src="{_e(name)}" alt="{_e(alt)}">'


def _summary(data: ReportData) -> str:
    r = data.run
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))
    others = [rid for rid in data.run_ids if rid != r.id]
    rows = [("run", f"<code>{_e(r.id)}</code> ({_e(r.status)})"), ("started", _e(when)),
            ("generation", _e(r.generation)), ("evaluated", f"{r.evaluated} ({r.failed} failed, {r.pending} pending)"),
            ("budget spent", f"{r.budget_spent_s / 60:.1f} min, ${r.dollars:.2f}, {r.tokens} tokens"),
            ("database", f"<code>{_e(data.db_path)}</code>")]
    if others:
        rows.append(("other runs", " ".join(f"<code>{_e(o)}</code>" for o in others)))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    promo = ""
    if data.promotions:
        promo = ("<h3>promoted to the store</h3><table><tr><th>kernel id</th><th>candidate</th><th>spec key</th>"
                 "<th>speedup</th></tr>" + "".join(
                     f"<tr><td><code>{_e(p['kernel_id'])}</code></td><td><code>{_e(p['candidate_id'])}</code></td>"
                     f"<td><code>{_e(p['spec_key'])}</code></td>"
                     f"<td class=num>{_score(p['speedup'] if isinstance(p['speedup'], float) else None)}</td></tr>"
                     for p in data.promotions) + "</table>")
    return f'<section id="summary"><h2>Run</h2><table>{body}</table>{promo}</section>'


def _progress_html(data: ReportData, image: str | None) -> str:
    rows = "".join(f"<tr><td>{_e(sp.label)}</td><td><code>{_e(sp.spec_key)}</code></td><td class=num>{len(sp.points)}"
                   f"</td><td class=num>{_score(sp.best) if sp.best else '—'}</td></tr>" for sp in data.progress)
    table = ("<table><tr><th>spec</th><th>key</th><th>evaluated</th><th>best</th></tr>" + rows + "</table>"
             if rows else "<p class=muted>no candidate was evaluated in this run</p>")
    chart = _img(image, "best speedup over time") if image else ""
    return f'<section id="progress"><h2>Best speedup over time</h2>{chart}{table}</section>'


def _tree_html(tree: FamilyTree, image: str) -> str:
    rows = []
    for n in tree.main_line:
        verdict = ("<td class=ok>passed</td>" if n.ok else
                   f"<td class=fail>{_e(n.stage or 'not evaluated')}</td>")
        others = ", ".join(f"<code>{_e(p)}</code>" for p in n.parent_ids[1:])
        second = f"<span class=muted>second parent: {others}</span>" if others else ""
        rows.append(f"<tr><td class=num>{n.generation}</td><td class=num>{n.island}</td>"
                    f"<td><code>{_e(n.candidate_id)}</code></td><td>{_e(n.operator)}</td>"
                    f"<td><pre>{_e(n.change)}</pre>{second}"
                    f"</td><td class=num>{_score(n.score)}</td>{verdict}</tr>")
    kernel = f" — stored as <code>{_e(tree.kernel_id)}</code>" if tree.kernel_id else ""
    note = (f"<p class=muted>only the nearest {len(tree.nodes)} ancestors are drawn</p>" if tree.truncated else "")
    return (f"<h3>{_e(tree.label)}: winner <code>{_e(tree.winner_id)}</code>{kernel}</h3>{_img(image, 'family tree')}"
            f"{note}<table><tr><th>gen</th><th>island</th><th>candidate</th><th>operator</th><th>change</th>"
            f"<th>score</th><th>verdict</th></tr>{''.join(rows)}</table>")


def _grid_html(grid: IslandGrid, image: str) -> str:
    rows = "".join(f"<tr><td class=num>{c.island}</td><td>{_e(c.cell)}</td><td><code>{_e(c.candidate_id)}</code></td>"
                   f"<td class=num>{_score(c.score)}</td></tr>" for c in grid.elites)
    return (f"<h3>{_e(grid.label)}</h3><p class=muted>{grid.islands} island(s), {len(grid.cells)} occupied cell(s), "
            f"{grid.migrations} migration(s); a cell is a tile shape (block m x n), a pipelining depth (s1, s2, s3+) "
            f"and whether the kv loop is split</p>{_img(image, 'islands and MAP-Elites grid')}"
            f"<details><summary>every elite ({len(grid.elites)})</summary>"
            f"<table><tr><th>island</th><th>cell</th><th>elite</th><th>score</th></tr>{rows}</table></details>")


def _failures_html(failures: tuple[StageFailures, ...], image: str | None) -> str:
    if not failures:
        return '<section id="failures"><h2>Failures by cascade stage</h2><p class=muted>no failures</p></section>'
    rows = "".join(f"<tr><td>{_e(f.stage)}</td><td class=num>{f.count}</td><td>"
                   + "".join(f"<pre>{_e(m)}</pre>" for m in f.examples) + "</td></tr>" for f in failures)
    chart = _img(image, "failures by stage") if image else ""
    return (f'<section id="failures"><h2>Failures by cascade stage</h2>{chart}'
            f"<table><tr><th>stage</th><th>failed</th><th>examples</th></tr>{rows}</table></section>")


def render(data: ReportData, out_dir: Path) -> ReportFiles:
    """Draw every chart into ``out_dir`` and write ``index.html`` referencing them by relative name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []

    def draw(name: str, plot: Any, *args: Any) -> str:
        plot(*args, out_dir / name)
        images.append(out_dir / name)
        return name

    progress = draw("progress.png", _plot_progress, data.progress) if data.progress else None
    trees = "".join(_tree_html(t, draw(f"tree-{i}.png", _plot_tree, t)) for i, t in enumerate(data.trees))
    grids = "".join(_grid_html(g, draw(f"islands-{i}.png", _plot_grid, g))
                    for i, g in enumerate(data.grids) if g.elites)
    failures = draw("failures.png", _plot_failures, data.failures) if data.failures else None
    title = f"avo search report — {data.run.id}"
    page = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
            '<nav><a href="#summary">run</a><a href="#progress">progress</a><a href="#lineage">family trees</a>'
            '<a href="#islands">islands</a><a href="#failures">failures</a></nav>'
            f"{_summary(data)}{_progress_html(data, progress)}"
            f'<section id="lineage"><h2>Winners\' family trees</h2><p class=muted>Columns are generations; the blue '
            "line follows first parents (each tree's table), dotted lines lead to crossover's second parents, red "
            "crosses failed the cascade.</p>"
            f"{trees or '<p class=muted>no candidate passed the cascade</p>'}</section>"
            f'<section id="islands"><h2>Islands and MAP-Elites grid</h2>'
            f"{grids or '<p class=muted>no elites yet</p>'}</section>"
            f"{_failures_html(data.failures, failures)}</body></html>\n")
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return ReportFiles(out_dir, index, tuple(images))


def write_report(db_path: str | Path, out_dir: str | Path, run_id: str | None = None) -> ReportFiles:
    """Write ``index.html`` and its PNGs for ``run_id`` (default: the newest run) of the database at ``db_path``.

    Raises SearchNotFound (search.errors) for a missing database, an empty one or an unknown run;
    MissingDependency without matplotlib."""
    _figure(1, 1)  # fail on a missing matplotlib before reading anything
    return render(load_report_data(db_path, run_id), Path(out_dir))


# ---- CLI --------------------------------------------------------------------------------------------
def _command(args: argparse.Namespace) -> int:
    from .runner import default_db_path

    try:
        files = write_report(Path(args.db) if args.db else default_db_path(), args.out, args.run)
    except MissingDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {files.html} ({len(files.images)} image(s))")
    return 0


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on the search CLI's subparsers; the handler is set as the ``handler`` default."""
    p = subparsers.add_parser("report", help="HTML + PNG lineage report of a run (needs matplotlib)")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for index.html and its PNGs")
    p.add_argument("--db", metavar="PATH", help="search database (default: <AVO_CACHE_DIR>/search.db)")
    p.add_argument("--run", metavar="ID", help="run id from `status` (default: the newest run)")
    p.set_defaults(handler=_command)
    return p
