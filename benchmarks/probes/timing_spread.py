"""How far can the search's own timing be trusted? The spread of a candidate vs its baseline, measured (issue 22.4).

The search promotes a kernel when its speedup over the baseline clears ``1 + spread``; a spread wider than the win
keeps every real 2 % win out of the store. This probe times, with the search's own timing function
(``avo_inductor.search.bench.time_interleaved``) and its own launch path (the trusted launcher the timing worker
uses), for each spec:
- the untuned template kernel ("cand"), the same kernel as a second, independent callable ("twin": an A/A pair whose
  true speedup is exactly 1) and cuDNN ("cudnn"), interleaved round by round over rotated inputs;
- ``--trials`` independent repeats of the whole timing, per timing strategy (rounds x do_bench rep ms).
Per (spec, strategy) it reports the speedup estimate, how much it moved between trials (the real
reproducibility), two spread figures and the A/A pair's worst deviation from 1:
- "range": max over the two fns of (max - min) / median of their round medians (each fn on its own: the figure
  promotion compared against before);
- "paired": ``bench.paired_spread``, the half-width of a distribution-free confidence interval of the median of
  the per-round ratios baseline/candidate (rounds are interleaved, so drift common to both cancels in the ratio):
  the figure the evaluator's promotion now uses (``search/evaluate.py``: REP_MS, SCREEN_ROUNDS, PROMOTION_ROUNDS).
A strategy is trustworthy at 1 % when the trial-to-trial range, its spread figure and the A/A error are <= 1 %,
and an A/A pair never clears 1 + spread.
Usage (GPU): python -m benchmarks.probes.timing_spread [--specs "..."] [--strategies 5x100,20x25] [--trials 5]
             [--out DIR]
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from avo_inductor.check import run
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.loader import load_record
from avo_inductor.search import bench
from avo_inductor.spec import AttentionSpec, HardwareKey, parse_spec_text

from ..common import print_table, write_csv

DEFAULT_SPECS = ("4,32,32,4096,128,none;1,16,4,8192,128,causal;8,16,16,2048,64,causal;"
                 "8,16,16,2048,64,causal,train")
DEFAULT_STRATEGIES = "10x100,20x50,40x50,80x50"  # 10x100: the first promotion; 20x50: sessions 13-16; 80x50: now


@dataclass(frozen=True)
class SpreadRow:
    """One (spec, strategy): trial-to-trial behaviour of the search's speedup estimate."""

    spec: str
    strategy: str
    cand_ms: float
    speedup_vs_cudnn: float
    trial_range_pct: float  # (max - min) / median of the per-trial speedup estimates
    range_spread_pct: float  # median over trials of the per-fn range figure
    paired_spread_pct: float  # median over trials of bench.paired_spread
    aa_worst_pct: float  # worst |twin/cand - 1| over trials: an A/A pair's apparent win or loss
    aa_false_range: int  # trials where the A/A pair would have cleared 1 + its range spread
    aa_false_paired: int  # ... 1 + its paired spread


def parse_strategy(text: str) -> tuple[int, int]:
    """"RxM" -> (rounds, do_bench rep ms)."""
    try:
        rounds, rep = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"strategy must be ROUNDSxREP_MS (e.g. 20x25); got {text!r}") from None
    if rounds < 2 or rep < 1:
        raise ValueError(f"strategy needs >= 2 rounds and rep >= 1 ms; got {text!r}")
    return rounds, rep


def _fns(spec: AttentionSpec, device: torch.device, seeds: list[int]) -> dict[str, Any]:
    """cand, twin (the same kernel through a second callable and output buffers) and cuDNN, over rotated inputs."""
    loaded = load_record(baseline_record(spec, HardwareKey.current(device)))
    sets, dos = bench.timing_inputs(spec, seeds, device)

    def kernel_call() -> bench.Rotating:
        outs = [run.alloc(spec, device, float("nan")) for _ in sets]

        def call(i: int) -> Any:
            out, lse = outs[i]
            if dos is not None:
                return run.run_training_step(loaded, spec, sets[i], out, lse, dos[i])
            return run.run_forward(loaded, spec, sets[i], out, lse)
        return bench.Rotating(call, [(i,) for i in range(len(sets))])

    cudnn = bench.baseline_fns(spec, device, ("sdpa_cudnn",))["sdpa_cudnn"]
    if dos is not None:
        cudnn = bench.training_step(cudnn)
    base = bench.Rotating(cudnn, bench.baseline_args(sets, dos))
    return {"cand": kernel_call(), "twin": kernel_call(), "cudnn": base}


def measure(spec: AttentionSpec, device: torch.device, strategy: str, trials: int) -> SpreadRow:
    rounds, rep = parse_strategy(strategy)
    fns = _fns(spec, device, [11, 12, 13])
    speedups, cand_ms, ranges, paired, aa, aa_range, aa_paired = [], [], [], [], [], [], []
    for _ in range(trials):
        t = bench.time_interleaved(fns, device, rounds=rounds, rep_ms=rep)
        speedups.append(t["cudnn"].median_ms / t["cand"].median_ms)
        cand_ms.append(t["cand"].median_ms)
        ranges.append(max(t["cand"].spread, t["cudnn"].spread))
        paired.append(bench.paired_spread(t["cand"], t["cudnn"]))
        aa.append(t["twin"].median_ms / t["cand"].median_ms)
        aa_range.append(max(t["cand"].spread, t["twin"].spread))
        aa_paired.append(bench.paired_spread(t["cand"], t["twin"]))
    med = statistics.median(speedups)
    return SpreadRow(spec.to_text(), strategy, statistics.median(cand_ms), med,
                     100 * (max(speedups) - min(speedups)) / med, 100 * statistics.median(ranges),
                     100 * statistics.median(paired), 100 * max(abs(a - 1) for a in aa),
                     sum(1 for a, s in zip(aa, aa_range, strict=True) if max(a, 1 / a) > 1 + s),
                     sum(1 for a, s in zip(aa, aa_paired, strict=True) if max(a, 1 / a) > 1 + s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default=DEFAULT_SPECS, help="';'-separated spec texts (benchmarks.attention form)")
    parser.add_argument("--strategies", default=DEFAULT_STRATEGIES, help="comma-separated ROUNDSxREP_MS")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/timing"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this probe measures GPU timing; no CUDA device is visible")
    device = torch.device("cuda")
    specs = [parse_spec_text(s, dtype=args.dtype) for s in args.specs.split(";") if s.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for s in strategies:
        parse_strategy(s)
    rows = []
    for spec in specs:
        for strategy in strategies:
            row = measure(spec, device, strategy, args.trials)
            rows.append(row)
            print(f"{row.spec} {row.strategy}: {row.cand_ms:.3f} ms, {row.speedup_vs_cudnn:.3f}x cuDNN, trial range "
                  f"{row.trial_range_pct:.2f}%, spread range {row.range_spread_pct:.2f}% / paired "
                  f"{row.paired_spread_pct:.2f}%, A/A {row.aa_worst_pct:.2f}%",
                  flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "timing_spread.csv", [asdict(r) for r in rows])
    print(f"\n{torch.cuda.get_device_name()} (torch {torch.__version__}), {args.trials} trials per row")
    print_table([asdict(r) for r in rows], [f.name for f in fields(SpreadRow)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
