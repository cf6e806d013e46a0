"""``avo-search`` / ``python -m avo_inductor.search``: run | resume | status | lineage.

Thin: parses arguments, calls ``search.api`` and prints its data as text or, with ``--json``, as JSON. Exit codes
(``cli_support``): 0 ok, 1 refused or failed, 2 usage; user errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..cli_support import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_common_flags, add_json_flag, guarded, print_json,
                           prog_name)
from . import api, runner
from .report import add_report_command

# Exception -> exit code, first match wins. ValueError is bad input (flags, campaign content, AVO_* values).
_ERRORS: tuple[tuple[type[BaseException], int], ...] = (
    (api.SearchNotFound, EXIT_FAILED), (api.SearchRefused, EXIT_FAILED), (ValueError, EXIT_USAGE),
    (RuntimeError, EXIT_FAILED), (OSError, EXIT_FAILED), (sqlite3.Error, EXIT_FAILED), (ImportError, EXIT_FAILED))


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


def _db_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--db", metavar="PATH", help="search database (default: <AVO_CACHE_DIR>/search.db)")


def _slice_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--slice-minutes", type=_arg("slice_minutes"), metavar="M",
                    help="GPU time in slices: stop after M minutes, promote the best so far, leave the run paused "
                         "for `resume`")


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="search the pending queue, a campaign file or a model's attention shapes")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--pending", action="store_true", help="specs queued by compiles that missed the store")
    src.add_argument("--campaign", metavar="FILE", help="campaign TOML (see search/*.toml)")
    src.add_argument("--model", metavar="MOD:FACTORY",
                     help="factory() -> (model, example_inputs); its shapes are traced (inference specs for a model "
                          "in eval(), training specs for one in train mode; --train / --eval choose)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--train", dest="train", action="store_const", const=True,
                      help="--model: trace for training specs (forward + backward; about 3x the search cost)")
    mode.add_argument("--eval", dest="train", action="store_const", const=False,
                      help="--model: trace in eval() without grad for inference specs")
    run.add_argument("--generations", type=_arg("generations"))
    run.add_argument("--budget-minutes", type=_arg("budget_minutes"), help="wall-clock budget for the whole run")
    run.add_argument("--population", type=_arg("population"), help="children per island per generation")
    run.add_argument("--islands", type=_arg("islands"))
    run.add_argument("--operators", help="comma list of structured,agent (optionally name:weight); agent needs "
                                         "ANTHROPIC_API_KEY")
    run.add_argument("--seed", type=_arg("seed"))
    run.add_argument("--gpus", type=_arg("gpus"), help="local GPUs to use (default all; without a GPU leave it out: "
                                                       "one interpreter worker on the CPU); with --ray-address, "
                                                       "how many of the cluster's GPUs (default all)")
    run.add_argument("--agent-model")
    run.add_argument("--max-tokens", type=_arg("max_tokens"), help="agent token budget")
    run.add_argument("--max-dollars", type=_arg("max_dollars"), help="agent dollar budget")
    run.add_argument("--ray-address", help="fan evaluation out to a Ray cluster (pip install avo_inductor[ray])")
    run.add_argument("--quick", action="store_true",
                     help="tiny search for CI: 2 seeds, 1 generation of 1 child, 1 island, quick evaluation")
    _db_flag(run)
    _slice_flag(run)
    add_json_flag(run)
    run.set_defaults(handler=_run)


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or prog_name("avo_inductor.search", "avo-search"),
                                description="Evolutionary search for attention kernels (see search/README.md). "
                                            "Exit codes: 0 ok, 1 refused or failed, 2 usage.")
    add_common_flags(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,resume,status,lineage,report}")
    _add_run(sub)
    resume = sub.add_parser("resume", help="continue a killed or stopped run")
    resume.add_argument("run_id", metavar="RUN_ID", help='a run id from `status`, or "latest" (newest unfinished run)')
    _db_flag(resume)
    _slice_flag(resume)
    add_json_flag(resume)
    resume.set_defaults(handler=_resume)
    status = sub.add_parser("status", help="runs and best speedup per spec")
    _db_flag(status)
    add_json_flag(status)
    status.set_defaults(handler=_status)
    lineage = sub.add_parser("lineage", help="ancestry of a spec key, kernel id or candidate id")
    lineage.add_argument("ref", metavar="SPEC_KEY|KERNEL_ID|CANDIDATE_ID")
    _db_flag(lineage)
    add_json_flag(lineage)
    lineage.set_defaults(handler=_lineage)
    # Subcommands from other modules register here, one call each: add_<name>_command(sub) adds its parser and
    # sets its ``handler`` default (a function Namespace -> exit code).
    add_report_command(sub)
    return p


def _progress(args: argparse.Namespace) -> Any:
    """The JSONL run log beside the database plus live progress; with --json the live lines go to stderr so
    stdout carries the result object only."""
    from .progress import Fanout, JsonlLog, PlainProgress, make_progress

    log = api.writable_db(args.db).with_suffix(".jsonl")
    return Fanout(JsonlLog(log), PlainProgress(sys.stderr)) if args.json else make_progress(log)


def _db_path(args: argparse.Namespace) -> Path:
    return Path(args.db) if args.db else runner.default_db_path()


def _print_result(result: api.RunResult, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
        return
    print(f"run {result.run_id} stopped ({result.stop_reason})")
    for s in result.specs:
        if s.kernel_id:
            print(f"  stored  {s.spec_key}: {s.kernel_id}")
        elif s.rejected:
            print(f"  kept out {s.spec_key}: {s.rejected}")


def _interrupted() -> int:
    print("interrupted; continue with `resume RUN_ID` (see `status`)", file=sys.stderr)
    return 130


def _run(args: argparse.Namespace) -> int:
    operators = tuple(o.strip() for o in args.operators.split(",") if o.strip()) if args.operators else None
    sink = _progress(args)
    try:
        result = api.run(args.campaign, model=args.model, pending=args.pending, train=args.train,
                         generations=args.generations, budget_minutes=args.budget_minutes,
                         population=args.population, islands=args.islands, operators=operators, seed=args.seed,
                         gpus=args.gpus, agent_model=args.agent_model, max_tokens=args.max_tokens,
                         max_dollars=args.max_dollars, ray_address=args.ray_address, db=_db_path(args),
                         quick=args.quick, slice_minutes=args.slice_minutes, progress=sink)
    except KeyboardInterrupt:
        return _interrupted()
    finally:
        sink.close()
    _print_result(result, args.json)
    return EXIT_OK


def _resume(args: argparse.Namespace) -> int:
    sink = _progress(args)
    try:
        result = api.resume(args.run_id, db=_db_path(args), slice_minutes=args.slice_minutes, progress=sink)
    except KeyboardInterrupt:
        return _interrupted()
    finally:
        sink.close()
    _print_result(result, args.json)
    return EXIT_OK


def _best_per_spec(runs: list[api.RunStatus]) -> list[tuple[api.SpecResult, str]]:
    """(best result, its run id) per spec over every run, spec keys sorted."""
    best: dict[str, tuple[api.SpecResult, str]] = {}
    for r in runs:
        for s in r.specs:
            if s.best_speedup is not None and (s.spec_key not in best
                                               or s.best_speedup > (best[s.spec_key][0].best_speedup or 0.0)):
                best[s.spec_key] = (s, r.run_id)
    return [best[k] for k in sorted(best)]


def _status(args: argparse.Namespace) -> int:
    runs = api.status(_db_path(args))
    if args.json:
        print_json({"db": str(_db_path(args)), "runs": [r.to_dict() for r in runs]})
        return EXIT_OK
    if not runs:
        print(f"no runs in {_db_path(args)}")
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started))
        print(f"{r.run_id}  {r.status:<11} {when}  gen {r.generation}  {r.evaluated} evaluated ({r.failed} failed, "
              f"{r.pending} pending)  {r.budget_spent_s / 60:.1f} min  ${r.dollars:.2f}  {r.source}"
              + (f"  on {r.gpu}" if r.gpu else ""))
    best = _best_per_spec(runs)
    if best:
        print("best per spec:")
    for s, run_id in best:
        kernel = f" -> kernel {s.kernel_id}" if s.kernel_id else ""
        print(f"  {s.best_speedup:6.3f}x  {s.spec:<48} {s.best_candidate_id} ({run_id}){kernel}")
    return EXIT_OK


def _lineage(args: argparse.Namespace) -> int:
    found = api.lineage(args.ref, _db_path(args))
    if args.json:
        print_json(found.to_dict())
        return EXIT_OK
    for step in found.steps:
        score = f"{step.score:.3f}x" if step.score is not None else "—"
        verdict = step.stage or step.status
        print(f"gen {step.generation:>3} isl {step.island}  {step.candidate_id}  {step.operator:<10} {score:>8}  "
              f"{verdict:<14} {step.diff}" + (f"  [{step.message[:80]}]" if step.ok is False and step.message else ""))
    return EXIT_OK


def _handle(args: argparse.Namespace, prog: str) -> int:
    try:
        code: int = args.handler(args)
        return code
    except api.NothingToDo as exc:  # an empty queue is not a failure: a cron job draining it exits 0
        print(f"{prog}: {exc}", file=sys.stderr)
        if args.json:
            print_json({"run_id": None, "nothing_to_do": str(exc)})
        return EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    return guarded(parser.prog, lambda: _handle(args, parser.prog), _ERRORS)


if __name__ == "__main__":
    sys.exit(main())
