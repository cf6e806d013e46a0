"""The paired spread figure (bench.paired_spread) and the timing-spread probe's argument handling (issue 22.4)."""
from __future__ import annotations

import math
import random

import pytest

from avo_inductor.search.bench import Timing, median_ci_ranks, paired_spread
from benchmarks.probes import timing_spread


@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 1), (6, 1), (9, 2), (10, 2), (20, 6), (40, 14)])
def test_median_ci_ranks_match_the_binomial_table(n, k):
    assert median_ci_ranks(n) == k
    coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
    assert n < 6 or coverage >= 0.95


def _timing(samples):
    return Timing(sorted(samples)[len(samples) // 2], 0.0, tuple(samples), "test")


@pytest.mark.parametrize("rounds", [5, 20])
def test_common_drift_cancels_in_the_paired_ratio(rounds):
    rng = random.Random(rounds)
    drift = [1 + 0.2 * rng.random() for _ in range(rounds)]  # 20 % clock wander shared by both fns
    cand = _timing([0.5 * d for d in drift])
    base = _timing([0.55 * d for d in drift])
    assert max(cand.samples_ms) / min(cand.samples_ms) > 1.05  # each fn on its own wandered a lot
    assert paired_spread(cand, base) < 1e-12  # the ratio did not: the 10 % win is known exactly


def test_independent_noise_widens_the_paired_spread_and_more_rounds_narrow_it():
    rng = random.Random(7)

    def spread(rounds):
        cand = _timing([1 + rng.gauss(0, 0.02) for _ in range(rounds)])
        base = _timing([1 + rng.gauss(0, 0.02) for _ in range(rounds)])
        return paired_spread(cand, base)

    few = sorted(spread(5) for _ in range(30))[15]
    many = sorted(spread(40) for _ in range(30))[15]
    assert 0.005 < many < few


def test_paired_spread_needs_two_rounds_and_equal_counts():
    assert paired_spread(_timing([1.0]), _timing([1.0])) == math.inf
    with pytest.raises(ValueError):
        paired_spread(_timing([1.0, 1.1]), _timing([1.0]))
    with pytest.raises(ValueError):
        median_ci_ranks(0)


@pytest.mark.parametrize("bad", ["20", "x25", "1x25", "5x0", "ax5"])
def test_probe_rejects_malformed_strategies(bad):
    with pytest.raises(ValueError, match="strategy"):
        timing_spread.parse_strategy(bad)
    assert timing_spread.parse_strategy("20x25") == (20, 25)


def test_probe_refuses_to_run_without_cuda(capsys):
    with pytest.raises(SystemExit) as exc:
        timing_spread.main(["--trials", "1"])
    assert exc.value.code == 2 and "no CUDA device" in capsys.readouterr().err
