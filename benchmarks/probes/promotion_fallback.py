"""Promotion against the fallback, on a GPU: the untuned template kernel re-measured exactly as promotion does it.

For each spec the default genome is evaluated by ``SandboxedEvaluator.promote`` (fresh sandboxed worker, held-out
shapes, promotion timing): the worker times the candidate, the best built-in (Flex included) and the fallback
(``bench.FALLBACK``: SDPA as a miss runs it) interleaved, and the parent computes both speedups. The row says what
``promotion_decision`` would do. Expected on an H100: masked specs (window, padding, ALiBi) promoted on their
speedup over the dense-mask SDPA fallback even where Flex is faster; plain causal promoted only if it beats SDPA.
Usage (GPU): python -m benchmarks.probes.promotion_fallback [--specs "a;b"]
"""
from __future__ import annotations

import argparse

from avo_inductor.kernels.render import default_genome
from avo_inductor.search.evaluate import SandboxedEvaluator
from avo_inductor.search.operators import candidate_id, genome_hash
from avo_inductor.search.promotion import promotion_decision
from avo_inductor.search.types import Candidate
from avo_inductor.spec import HardwareKey, parse_spec_text

from ..common import print_table

DEFAULT_SPECS = ("1,32,8,4096,4096,128 bf16 causal/win1024;4,16,16,2048,2048,64 bf16 full+padding;"
                 "2,16,16,2048,2048,64 bf16 causal+alibi;4,32,8,2048,2048,128 bf16 causal")
COLUMNS = ("spec", "stage", "ms", "fallback_ms", "vs_fallback", "best_builtin", "vs_best_builtin", "spread",
           "promoted", "why")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default=DEFAULT_SPECS, help="';'-separated spec texts")
    args = ap.parse_args(argv)
    hardware = HardwareKey.current()
    rows = []
    with SandboxedEvaluator() as evaluator:
        for text in args.specs.split(";"):
            spec = parse_spec_text(text.strip())
            genome = default_genome(spec, hardware)
            result = evaluator.promote(Candidate(candidate_id(spec, genome_hash(genome)), spec, genome=genome))
            ok, why = promotion_decision(result)
            rows.append({"spec": spec.to_text(), "stage": result.stage.value, "ms": result.median_ms,
                         "fallback_ms": result.fallback_ms, "vs_fallback": result.speedup_vs_fallback,
                         "best_builtin": result.baseline, "vs_best_builtin": result.speedup, "spread": result.spread,
                         "promoted": ok, "why": why[:160]})
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
