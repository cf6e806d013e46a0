"""Real ``transformers`` models (benchmarks/hf_cases.py) under backend="avo" vs "inductor" vs eager, in two phases.

Phase ``out-of-box``: a fresh, empty AVO_CACHE_DIR with the shipped bundle readable (AVO_USE_SHIPPED=1), as a new
user gets it. Phase ``searched`` (``--search-minutes N`` > 0): per model, ``python -m avo_inductor.search run
--model benchmarks.hf_cases:<factory> --budget-minutes N`` into that same store, then avo is measured again; its
baselines are the out-of-box phase's (same process, same GPU). Per model and mode (``infer``: forward under no_grad;
``train``: forward + backward, Llama and GPT-2): eager, inductor and avo on the model, plus, for masked models, its
``attn_implementation="sdpa"`` twin under inductor (the reference they are judged against; Llama's SDPA version is a
case of its own, ``llama-sdpa``).
Compiles are cold (benchmarks/models.py ``measure``: fresh Inductor caches); the avo pass's own seconds come from
its SiteReports hook (models.observe_avo_pass) and are compared with inductor's first call on the same model
(target: <= 10 % on a hit; a bundle record's one-time first-use verification is part of the pass time).
Per model and phase, ``explain()`` counts its sites: hits, class hits, fallbacks, skips, errors.

Usage: python -m benchmarks.hf_models [--cases llama-eager,mistral-window:1:8192,...] [--modes infer,train]
         [--search-minutes 10] [--quick | --tiny] [--warmup 3] [--iters 10] [--cache-dir DIR] [--out DIR]
Writes <out>/hf_models.csv (one row per model, mode and phase), <out>/hf_targets.csv and <out>/hf_models.png
(default out benchmarks/results/<gpu>/), the search logs as <out>/hf-search-<model>-<B>x<N>.log; prints the
targets, then the table with every number's same-run baseline and the GPU name last. A failure is a "failed: ..."
cell. Default (9 models, and the window model at 8k context too; --search-minutes 0): about 4 minutes on an H100
(session 14, without the 8k row; that row took about a minute alone); ``--quick``: 5 models at shorter sequences,
~2 minutes (H100, session 13); the search phase adds N minutes per model plus promotion (one model per 10-minute
device call: ``--cases NAME --search-minutes 6``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import hf_cases as hc
from .common import RESULTS, Panel, bar_panels, gpu_slug, print_table, write_csv
from .models import (PassLog, Timing, Variant, classify_path, clipped, failure_text, free_memory, measure, rel_err,
                     warm_process)

REPO = Path(__file__).resolve().parent.parent
MODES = ("infer", "train")
OOB, SEARCHED = "out-of-box", "searched"
SEARCH_GRACE_S = 300  # promotion re-verifies winners after the budget ends; past this the search is stopped


@dataclass(frozen=True)
class Run:
    """One model at one shape; ``modes`` are those it runs (train only where the case trains)."""

    case: hc.HFCase
    batch: int
    seq: int
    modes: tuple[str, ...]


def parse_runs(text: str, profile: str, modes: Sequence[str]) -> list[Run]:
    """``name`` or ``name:batch:seq`` comma list; names from hf_cases.CASES."""
    runs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, *shape = item.split(":")
        if name not in hc.CASES or len(shape) not in (0, 2) or not all(s.isdigit() and int(s) > 0 for s in shape):
            raise SystemExit(f"bad case {item!r}: use name or name:batch:seq, name in {', '.join(hc.CASES)}")
        case = hc.CASES[name]
        batch, seq = (int(shape[0]), int(shape[1])) if shape else hc.SHAPES[profile][name]
        runs.append(Run(case, batch, seq, tuple(m for m in modes if m == "infer" or case.trains)))
    return runs


# ---- the explain() summary ---------------------------------------------------------------------------------------
def site_counts(sites: Sequence[Any]) -> dict[str, Any]:
    """Counts over SiteReports: exact hits, class hits (a record tuned at another shape of the same class:
    ``SiteReport.tuned_at`` is that shape), fallbacks (rewritten to or kept as SDPA), skips, errors; the first reason
    why a site was not a hit, and the spec detection gave the first such site (the first site when all hit): a miss
    is often a detection outcome (an H100 run read BERT's padding mask as a bias; only the spec showed it)."""
    from avo_inductor.backend import report as rep

    def is_class(s: Any) -> bool:
        return s.tuned_at is not None

    hits = [s for s in sites if s.action == rep.AVO]
    why = next((s.reason for s in sites if s.action != rep.AVO and s.reason), "")
    shown = next((s for s in sites if s.action != rep.AVO and s.spec is not None), None) or \
        next((s for s in sites if s.spec is not None), None)
    return {"sites": len(sites), "hits": sum(not is_class(s) for s in hits), "class hits": sum(map(is_class, hits)),
            "fallbacks": sum(s.action in (rep.SDPA, rep.KEPT) for s in sites),
            "skips": sum(s.action == rep.SKIPPED for s in sites), "errors": sum(s.action == rep.ERROR for s in sites),
            "rewritten": sum(s.action in (rep.AVO, rep.SDPA) for s in sites),
            "why not hit": why[:120], "site spec": shown.spec.to_text() if shown is not None else ""}


def explain_counts(model: torch.nn.Module, x: torch.Tensor, train: bool) -> dict[str, Any]:
    """``avo_inductor.explain`` on the model in the mode's train/grad state (what the compile will see)."""
    from avo_inductor import explain

    model.train(train)
    try:
        with torch.set_grad_enabled(train):
            report = explain(model, x, quiet=True)
    except Exception as exc:  # a failed explain is a cell
        return {"why not hit": failure_text(exc)}
    finally:
        free_memory(model)
    return site_counts(report.sites)


# ---- measuring ---------------------------------------------------------------------------------------------------
def measure_into(row: dict[str, Any], label: str, model: torch.nn.Module, backend: str, x: torch.Tensor,
                 train: bool, timing: Timing, ref: torch.Tensor | None,
                 ref32: torch.Tensor | None = None) -> torch.Tensor | None:
    """Time one variant into ``row`` (``<label> ms``, ``<label> first s``, avo's path and pass seconds); returns
    its first output (eager's is the reference the others' ``err`` is taken against; ``ref32``, the float32 model's
    eager output, gives ``<label> err32``)."""
    log = PassLog() if backend == "avo" else None
    out = None
    try:
        result, out = measure(model, Variant(backend, label), x, train, timing, ref, log)
        row[f"{label} ms"], row[f"{label} first s"] = result.ms, result.first_s
        if result.err is not None:
            row[f"{label} err"] = result.err
        err32 = rel_err(out, ref32) if out is not None and ref32 is not None else None
        if err32 is not None:
            row[f"{label} err32"] = err32
    except Exception as exc:  # a failed variant is a cell, never a crashed run
        row[f"{label} ms"] = failure_text(exc)
    if log is not None:
        path, note = classify_path(log, set())
        row.update({"avo path": path, "avo note": note[:160], "avo pass s": log.seconds})
    free_memory(model)
    return out.detach() if out is not None else None


@dataclass(frozen=True)
class Setup:
    profile: str
    timing: Timing
    device: str
    dtype: torch.dtype
    gpu: str


def _key(run: Run, mode: str, phase: str, gpu: str) -> dict[str, Any]:
    return {"model": run.case.name, "attn": run.case.attn, "B": run.batch, "N": run.seq, "mode": mode,
            "phase": phase, "gpu": gpu}


def _build(run: Run, attn: str, setup: Setup) -> torch.nn.Module:
    return hc.build_model(run.case, attn, setup.profile, run.seq, setup.device, setup.dtype)


def _input(run: Run, setup: Setup) -> torch.Tensor:
    return hc.make_input(run.case, setup.profile, run.batch, run.seq, setup.device, setup.dtype)


def out_of_box_rows(run: Run, setup: Setup) -> list[dict[str, Any]]:
    """Every mode of one model: eager (the reference), inductor, avo, the SDPA twin under inductor, explain()."""
    rows = [_key(run, mode, OOB, setup.gpu) for mode in run.modes]
    try:
        model, x = _build(run, run.case.attn, setup), _input(run, setup)
        twin = _build(run, "sdpa", setup) if run.case.twin else None
    except Exception as exc:  # e.g. out of memory building the model: every cell says so
        free_memory()
        return [{**r, "avo ms": failure_text(exc)} for r in rows]
    for row in rows:
        train = row["mode"] == "train"
        ref32 = None if train else float32_output(model, x)
        ref = measure_into(row, "eager", model, "eager", x, train, setup.timing, None, ref32)  # None when training
        measure_into(row, "inductor", model, "inductor", x, train, setup.timing, ref, ref32)
        if twin is not None:
            measure_into(row, "inductor[sdpa]", twin, "inductor", x, train, setup.timing, ref, ref32)
        measure_into(row, "avo", model, "avo", x, train, setup.timing, ref, ref32)
        row.update(explain_counts(model, x, train))
        add_ratios(row)
        print(_short(row), flush=True)
    del model, twin, x
    free_memory()
    return rows


def searched_rows(run: Run, setup: Setup, baseline: Sequence[dict[str, Any]], outcome: str) -> list[dict[str, Any]]:
    """avo again after the search, next to the out-of-box phase's baselines (same run, same GPU)."""
    rows = []
    try:
        model, x = _build(run, run.case.attn, setup), _input(run, setup)
    except Exception as exc:  # e.g. out of memory building the model: every cell says so
        free_memory()
        return [{**_key(run, b["mode"], SEARCHED, setup.gpu), "avo ms": failure_text(exc), "search": outcome}
                for b in baseline]
    for base in baseline:
        train = base["mode"] == "train"
        row = {**_key(run, base["mode"], SEARCHED, setup.gpu), "search": outcome}
        row.update({k: v for k, v in base.items() if k.startswith(("eager ", "inductor"))})
        ref = None if train else eager_output(model, x)
        ref32 = None if train else float32_output(model, x)
        measure_into(row, "avo", model, "avo", x, train, setup.timing, ref, ref32)
        row.update(explain_counts(model, x, train))
        add_ratios(row, out_of_box=base)
        print(_short(row), flush=True)
        rows.append(row)
    del model, x
    free_memory()
    return rows


def float32_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The eager output of a float32 copy of ``model`` (same weights; float inputs cast): the reference that tells
    whether a variant's distance from the bf16 eager output is error or accuracy. BLOOM's eager ALiBi scores round
    to bf16 at magnitudes near N (an ulp of 8 at 2048), which a kernel adding the bias in float32 does not copy.
    None when the copy does not fit on the device."""
    try:
        twin = copy.deepcopy(model).float().eval()
        with torch.no_grad():
            out = twin(x.float() if x.is_floating_point() else x).detach()
        del twin
        return out
    except torch.OutOfMemoryError:
        free_memory()
        return None


def eager_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The eager inference output the searched kernels' ``avo err`` is taken against."""
    model.eval()
    with torch.no_grad():
        return model(x).detach()


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def add_ratios(row: dict[str, Any], out_of_box: dict[str, Any] | None = None) -> None:
    """Time ratios (x faster than the baseline) and the pass-time share, only where both sides are numbers."""
    avo = _num(row.get("avo ms"))
    for label, col in (("inductor", "x inductor"), ("inductor[sdpa]", "x sdpa twin"), ("eager", "x eager")):
        base = _num(row.get(f"{label} ms"))
        if avo and base:
            row[col] = base / avo
    ind_first, pass_s = _num(row.get("inductor first s")), _num(row.get("avo pass s"))
    if ind_first and pass_s:
        row["avo pass % of inductor first"] = 100.0 * pass_s / ind_first
    if out_of_box is not None:
        before = _num(out_of_box.get("avo ms"))
        if avo and before:
            row["x out-of-box"] = before / avo


def _short(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if not k.endswith("note")}


# ---- the search phase --------------------------------------------------------------------------------------------
def search_target(run: Run) -> str:
    """The search CLI's ``--model`` for this run: the case's factory in hf_cases."""
    return f"benchmarks.hf_cases:{run.case.factory}"


def search_command(run: Run, minutes: float) -> list[str]:
    return [sys.executable, "-m", "avo_inductor.search", "run", "--model", search_target(run),
            "--budget-minutes", f"{minutes:g}"]


def run_search(run: Run, minutes: float, profile: str, cache_dir: Path, log_path: Path) -> str:
    """The search CLI in a subprocess (its own GPU memory and workers) on this run's store; returns the outcome
    in a few words ("stored 2, kept out 1" / "failed (exit 2): ..."). Past the budget plus SEARCH_GRACE_S it gets
    SIGINT (the search promotes what it has and stops), then SIGKILL a minute later."""
    train = "train" in run.modes
    env = {**os.environ, **hc.search_env(profile, run.batch, run.seq, train),
           "AVO_CACHE_DIR": str(cache_dir), "AVO_USE_SHIPPED": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(search_command(run, minutes), env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=minutes * 60 + SEARCH_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return f"stopped after {minutes:g} min + {SEARCH_GRACE_S} s"
    lines = log_path.read_text().splitlines()
    stored = sum(line.lstrip().startswith("stored") for line in lines)
    kept = sum(line.lstrip().startswith("kept out") for line in lines)
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode}): {(lines or [''])[-1][:100]}"
    return f"{minutes:g} min: stored {stored}, kept out {kept}"


@contextlib.contextmanager
def out_of_box_store(cache_dir: Path | None) -> Iterator[Path]:
    """A new user's store: empty (a temporary directory unless ``cache_dir`` is given) with the shipped bundle
    read (AVO_USE_SHIPPED=1); AVO_ON_MISS=fallback. The previous settings come back afterwards."""
    from avo_inductor.settings import configure, get_settings

    before = get_settings()
    tmp = None if cache_dir is not None else Path(tempfile.mkdtemp(prefix="avo-hf-store-"))
    path = cache_dir or tmp
    assert path is not None
    configure(cache_dir=path, use_shipped=True, on_miss="fallback")
    try:
        yield path
    finally:
        configure(cache_dir=before.cache_dir, use_shipped=before.use_shipped, on_miss=before.on_miss)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ---- targets and outputs -----------------------------------------------------------------------------------------
def target_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 21's targets per row: the ratio, its threshold, the same-run baseline, PASS / MISS / n/a."""
    out = []

    def add(name: str, row: dict[str, Any], ratio_col: str, base_col: str, threshold: float,
            at_most: bool = False, note: str = "") -> None:
        value = _num(row.get(ratio_col))
        verdict = "n/a" if value is None else ("PASS" if (value <= threshold if at_most else value >= threshold)
                                               else "MISS")
        out.append({"target": name, "model": row["model"], "B": row.get("B"), "N": row.get("N"), "mode": row["mode"],
                    "phase": row["phase"],
                    "value": value, "threshold": threshold, "baseline": row.get(base_col), "avo ms": row.get("avo ms"),
                    "verdict": verdict, "gpu": row.get("gpu"),
                    "note": note})

    for r in rows:
        if r["phase"] == OOB:
            # A model whose sites avo left as they were (SDPA calls kept) compiles to inductor's own graph: its ratio
            # to inductor is run-to-run noise, which the note says beside the measured verdict.
            unchanged = bool(r.get("sites")) and r.get("rewritten") == 0
            add(">= 1.0x inductor out of the box", r, "x inductor", "inductor ms", 1.0,
                note="graph unchanged by avo: the ratio is run-to-run noise" if unchanged else "")
            if hc.CASES[r["model"]].masked and hc.CASES[r["model"]].twin:
                add(">= 1.3x sdpa twin under inductor (masked)", r, "x sdpa twin", "inductor[sdpa] ms", 1.3)
            if r["model"] == "mistral-window":
                add(">= 2x inductor, window, no search", r, "x inductor", "inductor ms", 2.0)
            if r["model"] == "bloom-alibi":
                add(">= 1.5x inductor, ALiBi", r, "x inductor", "inductor ms", 1.5)
        else:
            add("after search >= out of box", r, "x out-of-box", "avo ms", 1.0)
        if str(r.get("avo path", "")).startswith("hit"):
            add("avo pass <= 10% of inductor first compile (hit)", r, "avo pass % of inductor first",
                "inductor first s", 10.0, at_most=True)
    return out


def write_plot(rows: Sequence[dict[str, Any]], path: Path, gpu: str) -> None:
    """Speedup vs inductor, vs the SDPA twin (masked models) and the pass-time share, one series per phase."""
    def group(r: dict[str, Any]) -> str:  # a model run at two shapes (the window model at 8k) gets two bars
        return f"{r['model']} {r['mode']} N{r.get('N', '?')}"

    groups = list(dict.fromkeys(group(r) for r in rows))
    masked = [g for g in groups if hc.CASES[g.split()[0]].masked and hc.CASES[g.split()[0]].twin]

    def series(col: str, names: Sequence[str]) -> dict[str, Sequence[float | None]]:
        return {phase: [next((_num(r.get(col)) for r in rows if group(r) == g and r["phase"] == phase), None)
                        for g in names] for phase in (OOB, SEARCHED) if any(r["phase"] == phase for r in rows)}

    panels = [Panel("avo step time: x faster than backend=inductor on the same model", groups,
                    series("x inductor", groups), "x faster", hline=1.0)]
    if masked:
        panels.append(Panel('masked models: x faster than the attn_implementation="sdpa" twin under inductor', masked,
                            series("x sdpa twin", masked), "x faster", hline=1.3))
    panels.append(Panel("avo pass time, % of inductor's first (cold) compile", groups,
                        series("avo pass % of inductor first", groups), "%", hline=10.0))
    bar_panels(path, panels, f"transformers models, avo vs inductor ({gpu})")


TABLE = ["model", "mode", "phase", "B", "N", "eager ms", "inductor ms", "inductor[sdpa] ms", "avo ms", "x inductor",
         "x sdpa twin", "x out-of-box", "avo err", "inductor err32", "avo err32", "avo path", "sites", "hits",
         "class hits", "fallbacks", "skips", "errors", "inductor first s", "avo first s", "avo pass s",
         "avo pass % of inductor first", "search"]


def print_report(rows: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], gpu: str) -> None:
    """Targets, then the main table (last, what a log tail shows), headed by the GPU name."""
    print()
    print("targets (issue 21; baseline = the same run's number the ratio divides):")
    print_table(clipped(targets), ["target", "model", "B", "N", "mode", "phase", "value", "threshold", "baseline",
                                   "avo ms", "verdict", "note"])
    print()
    print(f"GPU: {gpu}   torch {torch.__version__}   (ms: median step; x: baseline ms / avo ms, same run)")
    print_table(clipped(rows, 32), [c for c in TABLE if any(c in r for r in rows)])


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter)"


# ---- main --------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None,
                   help=f"comma list of name[:batch:seq] (default {','.join(hc.DEFAULT_CASES)})")
    p.add_argument("--modes", default="infer,train", help="comma list of infer,train (train: Llama and GPT-2)")
    p.add_argument("--search-minutes", type=float, default=10.0,
                   help="search budget per model for the second phase; 0 skips it (default 10)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"models {','.join(hc.QUICK_CASES)}, shorter sequences")
    size.add_argument("--tiny", action="store_true", help="1-layer head-dim-16 models for the CPU interpreter")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; --quick 1)")
    p.add_argument("--iters", type=int, default=None, help="timed steps, median reported (default 10; --quick 5)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="the store both phases use (default: a fresh temporary one; given, it is kept)")
    p.add_argument("--no-warm-process", action="store_true", help="skip the warm-up compile (tests only)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes {args.modes!r}: use a comma list of {','.join(MODES)}")
    if not (args.search_minutes >= 0 and args.search_minutes < 1e4):
        p.error(f"--search-minutes {args.search_minutes}: use a number of minutes >= 0 (0 skips the search)")
    args.modes = modes
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    profile = "tiny" if args.tiny else "quick" if args.quick else "full"
    default = {"tiny": hc.TINY_CASES, "quick": hc.QUICK_CASES, "full": hc.DEFAULT_CASES}[profile]
    runs = parse_runs(args.cases or ",".join(default), profile, args.modes)
    device, dtype = hc.device_and_dtype()
    timing = Timing(args.warmup if args.warmup is not None else (1 if args.quick else 3),
                    args.iters if args.iters is not None else (5 if args.quick else 10))
    setup = Setup(profile, timing, device, dtype, gpu_name())
    out = args.out or RESULTS / gpu_slug()
    rows: list[dict[str, Any]] = []
    with out_of_box_store(args.cache_dir) as store_dir:
        if not args.no_warm_process:
            warm_process(device, dtype)
        by_run = {}
        for run in runs:
            by_run[run] = out_of_box_rows(run, setup)
            rows += by_run[run]
            write_csv(out / "hf_models.csv", rows)  # a run cut short by a time limit still leaves its rows
        for run in runs if args.search_minutes > 0 else []:
            log = out / f"hf-search-{run.case.name}-{run.batch}x{run.seq}.log"
            outcome = run_search(run, args.search_minutes, profile, store_dir, log)
            print(f"search {run.case.name}: {outcome}", flush=True)
            rows += searched_rows(run, setup, by_run[run], outcome)
            write_csv(out / "hf_models.csv", rows)
    targets = target_rows(rows)
    write_csv(out / "hf_targets.csv", targets)
    write_plot(rows, out / "hf_models.png", setup.gpu)
    print_report(rows, targets, setup.gpu)
    return rows


if __name__ == "__main__":
    main()
