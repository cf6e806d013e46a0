"""``python -m avo_inductor.search``: run | status | lineage | resume. Parses arguments, calls runner, prints.

Errors the user can fix (bad input, corrupt database, missing optional dependency) print one line and
exit 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from collections.abc import Callable, Sequence

from . import runner
from .progress import make_progress
from .report import add_report_command


def _arg(name: str) -> Callable[[str], int | float]:
    """An argparse ``type=`` for the numeric option ``name``: NaN, inf, negatives and out-of-range values are a
    usage error (exit 2) naming the flag, checked by the same rule as RunOptions and campaign values."""
    def convert(text: str) -> int | float:
        try:
            return runner.check_run_number(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace(name, "--" + name.replace("_", "-"), 1)) from None
    convert.__name__ = name
    return convert


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m avo_inductor.search",
                                description="Evolutionary search for attention kernels (see search/README.md).")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="search the pending queue, a campaign file or a model's attention shapes")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--pending", action="store_true", help="specs queued by compiles that missed the store")
    src.add_argument("--campaign", metavar="FILE", help="campaign TOML (see search/*.toml)")
    src.add_argument("--model", metavar="MOD:FACTORY",
                     help="factory() -> (model, example_inputs); its shapes are traced")
    run.add_argument("--generations", type=_arg("generations"))
    run.add_argument("--budget-minutes", type=_arg("budget_minutes"), help="wall-clock budget for the whole run")
    run.add_argument("--population", type=_arg("population"), help="children per island per generation")
    run.add_argument("--islands", type=_arg("islands"))
    run.add_argument("--operators", help="comma list of structured,agent (optionally name:weight)")
    run.add_argument("--seed", type=_arg("seed"))
    run.add_argument("--gpus", type=_arg("gpus"), help="local GPUs to use (default all; CPU: one interpreter worker)")
    run.add_argument("--agent-model")
    run.add_argument("--max-tokens", type=_arg("max_tokens"), help="agent token budget")
    run.add_argument("--max-dollars", type=_arg("max_dollars"), help="agent dollar budget")
    run.add_argument("--ray-address", help="fan evaluation out to a Ray cluster (pip install avo_inductor[ray])")
    run.add_argument("--quick", action="store_true",
                     help="tiny search for CI: 2 seeds, 1 generation of 1 child, 1 island, quick evaluation")
    for name, sp in (("run", run), ("status", sub.add_parser("status", help="runs and best speedup per spec")),
                     ("lineage", sub.add_parser("lineage", help="ancestry of a spec key, kernel id or candidate id")),
                     ("resume", sub.add_parser("resume", help="continue a killed or stopped run"))):
        sp.add_argument("--db", metavar="PATH", help="search database (default: <AVO_CACHE_DIR>/search.db)")
        if name == "lineage":
            sp.add_argument("ref", metavar="SPEC_KEY|KERNEL_ID|CANDIDATE_ID")
        if name == "resume":
            sp.add_argument("run_id", metavar="RUN_ID",
                            help='a run id from `status`, or "latest" (newest unfinished run)')
        if name in ("run", "resume"):
            sp.add_argument("--slice-minutes", type=_arg("slice_minutes"), metavar="M",
                            help="GPU time in slices: stop after M minutes, promote the best so far, leave the run "
                                 "paused for `resume`")
    add_report_command(sub)
    return p


def _db(args: argparse.Namespace) -> Path:
    return Path(args.db) if args.db else runner.default_db_path()


def _print_outcome(outcome: runner.SearchOutcome) -> None:
    print(f"run {outcome.run_id} stopped ({outcome.stop_reason})")
    for key, kid in outcome.promoted.items():
        print(f"  stored  {key}: {kid}")
    for key, why in outcome.rejected.items():
        print(f"  kept out {key}: {why}")


def _run(args: argparse.Namespace) -> int:
    options = runner.RunOptions(
        pending=args.pending, campaign=args.campaign, model=args.model, generations=args.generations,
        budget_minutes=args.budget_minutes, population=args.population, islands=args.islands,
        operators=tuple(o.strip() for o in args.operators.split(",") if o.strip()) if args.operators else None,
        seed=args.seed, gpus=args.gpus, agent_model=args.agent_model, max_tokens=args.max_tokens,
        max_dollars=args.max_dollars, ray_address=args.ray_address, db=str(_db(args)), quick=args.quick)
    sink = make_progress(_db(args).with_suffix(".jsonl"))
    try:
        outcome = runner.execute(options, sink=sink, slice_minutes=args.slice_minutes)
    finally:
        sink.close()
    _print_outcome(outcome)
    return 0


def _resume(args: argparse.Namespace) -> int:
    sink = make_progress(_db(args).with_suffix(".jsonl"))
    try:
        outcome = runner.resume(args.run_id, _db(args), sink=sink, slice_minutes=args.slice_minutes)
    finally:
        sink.close()
    _print_outcome(outcome)
    return 0


def _status(args: argparse.Namespace) -> int:
    report = runner.status(_db(args))
    if not report.runs:
        print(f"no runs in {_db(args)}")
    for r in report.runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started))
        print(f"{r.id}  {r.status:<11} {when}  gen {r.generation}  {r.evaluated} evaluated ({r.failed} failed, "
              f"{r.pending} pending)  {r.budget_spent_s / 60:.1f} min  ${r.dollars:.2f}")
    if report.best:
        print("best per spec:")
    for b in report.best:
        kernel = f" -> kernel {b.kernel_id}" if b.kernel_id else ""
        print(f"  {b.speedup:6.3f}x  {b.spec.short():<48} {b.candidate_id} ({b.run_id}){kernel}")
    return 0


def _lineage(args: argparse.Namespace) -> int:
    for step in runner.lineage(args.ref, _db(args)):
        score = f"{step.score:.3f}x" if step.score is not None else "—"
        verdict = step.stage or step.status
        print(f"gen {step.generation:>3} isl {step.island}  {step.candidate_id}  {step.operator:<10} {score:>8}  "
              f"{verdict:<14} {step.diff}" + (f"  [{step.message[:80]}]" if step.ok is False and step.message else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = getattr(args, "handler", None) or {"run": _run, "resume": _resume, "status": _status,
                                                 "lineage": _lineage}[args.command]
    try:
        return handler(args)
    except runner.NothingToDo as exc:
        print(exc)
        return 0
    except (ValueError, RuntimeError) as exc:
        from ..settings import get_settings

        if get_settings().strict:  # AVO_STRICT=1: the full traceback, for debugging
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with `python -m avo_inductor.search resume RUN_ID` (see `status`)",
              file=sys.stderr)
        return 130
