"""Where does the avo pass spend its time on a real-model case? cProfile of ``run_avo_pass`` during one compile.

The real-model benchmark reports the pass's own seconds beside Inductor's first compile (issue 21: <= 10 % on a
hit); this probe says which functions make them up, and how long the compile then waits for the first-use checks
that ran beside Inductor (backend/deferred.py). Uses the shipped bundles (AVO_USE_SHIPPED=1) and a fresh store.
Usage (GPU): AVO_USE_SHIPPED=1 python -m benchmarks.probes.pass_profile [--case bloom-alibi] [--top 25]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import torch

from .. import hf_cases


def main(argv: list[str] | None = None) -> None:
    import avo_inductor  # noqa: F401 - registers backend="avo"
    from avo_inductor.backend import graph_pass, register

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="bloom-alibi", choices=sorted(hf_cases.CASES))
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    model, x = hf_cases.model_and_input(args.case, "full")
    profile = cProfile.Profile()
    real = graph_pass.run_avo_pass

    def profiled(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        profile.enable()
        try:
            return real(*a, **k)
        finally:
            profile.disable()
            print(f"run_avo_pass: {time.perf_counter() - start:.3f} s")
    patched = [name for name in dir(register) if getattr(register, name) is real]
    for name in patched:
        setattr(register, name, profiled)
    graph_pass.run_avo_pass = profiled
    real_settle = register.settle_deferred_checks

    def timed_settle(result: Any) -> bool:  # the part of background checks Inductor's compile did not hide
        start = time.perf_counter()
        try:
            return real_settle(result)
        finally:
            print(f"settle_deferred_checks (wait after Inductor's compile): {time.perf_counter() - start:.3f} s")
    register.settle_deferred_checks = timed_settle
    start = time.perf_counter()
    with torch.no_grad():
        torch.compile(model, backend="avo")(x)
    print(f"first call (compile and run): {time.perf_counter() - start:.3f} s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
