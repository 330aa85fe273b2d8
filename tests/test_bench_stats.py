"""The benchmark's intervals (bench/stats.py) on synthetic series with known answers, and the regression check's
decision rule (bench/against.py) on simulated A/A and slowed-down runs. Seeded numpy, well under a second each.

pytest tests/test_bench_stats.py
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import against, stats

REPEATS = 4000


def test_order_ranks_by_hand():
    # n = 6: [min, max] holds the median unless all 6 fall on one side: 1 - 2/64 = 96.9%
    assert stats.order_ranks(6) == (0, 5) and stats.coverage(6) == pytest.approx(62 / 64)
    # n = 10: the 2nd and 9th values, 1 - 2 (1 + 10) / 1024 = 97.9%; the 3rd and 8th would be 89%
    assert stats.order_ranks(10) == (1, 8) and stats.coverage(10) == pytest.approx(1 - 22 / 1024)
    assert stats.order_ranks(5) is None and stats.median_ci([1.0] * 5) is None  # 93.75% at best
    for n in range(6, 60):
        assert stats.coverage(n) >= 0.95


def _coverage(intervals: np.ndarray, truth: float) -> float:
    return float(np.mean((intervals[:, 0] <= truth) & (truth <= intervals[:, 1])))


def _block_intervals(series: np.ndarray, block: int) -> np.ndarray:
    """The blocked median interval of each row of `series` (vectorised stats.blocked_median_ci)."""
    medians = np.median(series.reshape(len(series), -1, block), axis=2)
    lo, hi = stats.order_ranks(medians.shape[1])
    ordered = np.sort(medians, axis=1)
    return ordered[:, [lo, hi]]


def test_blocked_interval_of_iid_calls_covers_the_true_median():
    # skewed latencies (lognormal, true median exactly 1), 9 blocks of 11 calls: coverage is exactly 96.1%
    rng = np.random.default_rng(0)
    series = rng.lognormal(0.0, 0.5, size=(REPEATS, 99))
    assert _coverage(_block_intervals(series, 11), 1.0) == pytest.approx(stats.coverage(9), abs=0.015)
    one = series[0]  # the function itself, on one series, agrees with the vectorised version
    assert stats.blocked_median_ci(one, 11) == tuple(_block_intervals(series[:1], 11)[0])


def test_drift_widens_the_blocked_interval_but_fools_one_over_single_calls():
    # a wandering machine (AR(1), correlation 0.98 from one call to the next, so about 50 calls' memory, less
    # than a block) around a known level 1
    rng = np.random.default_rng(1)
    n, phi = 900, 0.98
    noise = rng.normal(0.0, 0.01, size=(REPEATS // 4, n))
    drift = np.zeros_like(noise)
    drift[:, 0] = noise[:, 0] / np.sqrt(1 - phi**2)
    for i in range(1, n):
        drift[:, i] = phi * drift[:, i - 1] + noise[:, i]
    series = 1.0 + drift + rng.normal(0.0, 0.02, size=noise.shape)
    blocked = _coverage(_block_intervals(series, 100), 1.0)
    lo, hi = stats.order_ranks(n)
    ordered = np.sort(series, axis=1)
    single = _coverage(ordered[:, [lo, hi]], 1.0)
    assert single < 0.5  # 900 "independent" calls: far too narrow
    assert blocked > 0.85  # 9 blocks of 100: close to its nominal 96% despite the drift


def test_paired_ratio_interval_cancels_what_moves_both_sides():
    # each pair: both sides times a common machine factor that wanders by +-30%; true ratio 1.10
    rng = np.random.default_rng(2)
    machine = np.exp(np.cumsum(rng.normal(0, 0.1, size=(REPEATS, 9)), axis=1))
    a = machine * 1.10 * rng.lognormal(0, 0.02, size=machine.shape)
    b = machine * rng.lognormal(0, 0.02, size=machine.shape)
    ratios = np.sort(a / b, axis=1)
    lo, hi = stats.order_ranks(9)
    assert _coverage(ratios[:, [lo, hi]], 1.10) >= 0.95
    assert np.median(ratios[:, hi] / ratios[:, lo]) < 1.06  # narrow: the machine's wander cancelled


def test_decide_by_hand():
    assert stats.decide((0.86, 0.93), 0.05) == stats.REGRESSED
    assert stats.decide((0.96, 1.04), 0.05) == stats.OK
    assert stats.decide((0.93, 0.97), 0.05) == stats.SLOWER  # slower, not surely beyond 5%
    assert stats.decide((0.90, 1.02), 0.05) == stats.UNDECIDED  # holds both "no change" and "-10%"
    assert stats.decide(None, 0.05) == stats.UNDECIDED


def _simulated_checks(slowdown: float, noise: float, checks: int, figures: int = 18, seed: int = 3) -> tuple:
    """Checks as bench/against.py runs them: pairs of fresh processes, each figure's change
    lognormal around 1 / (1 + slowdown) with `noise` spread between processes, pairs from MIN_PAIRS until
    no interval holds 1 - threshold, or MAX_PAIRS. Returns (checks flagging any figure, share of figures flagged,
    checks left undecided)."""
    rng = np.random.default_rng(seed)
    flagging, flagged, undecided = 0, 0, 0
    for _ in range(checks):
        changes = rng.lognormal(-np.log1p(slowdown), noise, size=(figures, against.MAX_PAIRS))
        for n in range(against.MIN_PAIRS, against.MAX_PAIRS + 1):
            verdicts = [stats.decide(stats.ratio_ci(c[:n]), 0.05) for c in changes]
            if not set(verdicts) & set(stats.OPEN):
                break
        hits = verdicts.count(stats.REGRESSED)
        flagging += hits > 0
        flagged += hits
        undecided += stats.UNDECIDED in verdicts
    return flagging, flagged / (checks * figures), undecided


def test_simulated_aa_checks_rarely_flag_anything():
    # A/A with 3% noise between processes (twice what a quiet machine shows): no false alarm in 300 checks of
    # 18 figures each, although every round looks again
    flagging, share, undecided = _simulated_checks(0.0, 0.03, checks=300)
    assert flagging <= 3 and share < 0.001
    assert undecided <= 30  # nearly every A/A check comes to a verdict


def test_simulated_slowdowns_are_found():
    # a 10% slowdown of every figure, 2% noise: each figure flagged in nearly every check
    _, share, _ = _simulated_checks(0.10, 0.02, checks=100)
    assert share >= 0.9
    _, share, _ = _simulated_checks(0.20, 0.03, checks=100)
    assert share >= 0.99
