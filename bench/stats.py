"""Confidence intervals for the benchmark's figures, and the regression check's decision rule.

    >>> from bench import stats
    >>> stats.median_ci([9.8, 10.1, 10.0, 10.3, 9.9, 10.2, 10.0])      # 95% interval of the median
    (9.8, 10.3)
    >>> stats.blocked_median_ci(samples, block=101)    # of a series of calls: over the medians of its blocks
    >>> stats.ratio_ci([1.02, 0.98, 1.01, 0.97, 1.0, 1.03])             # of paired ratios: their median's
    >>> stats.decide((0.86, 0.93), threshold=0.05)     # "regressed": the whole interval is below 0.95

Every interval here is distribution-free, from order statistics: of n values drawn independently around a
median m, the k-th smallest lies below m with a binomial(n, 1/2) probability, so [x_(j), x_(n+1-j)] holds m with
probability 1 - 2 P(Bin(n, 1/2) < j). The widest j that keeps this at 95% or more gives the interval
(n = 10: the 2nd and 9th values, 97.9%; fewer than 6 values cannot give 95%, and get no interval).

Consecutive calls are not independent: the machine drifts (clock, cache, other processes), so an interval over
20,000 single calls would be far narrower than the figure's real uncertainty. So a latency row's interval is
taken over the medians of its blocks (segments of consecutive calls, an odd number each), which a drift moves
apart: with i.i.d. calls the median of an odd block lies below the true median with probability exactly 1/2,
and the interval is exact; with drift it widens as it should. A ratio's interval is taken over its pairs
(each the ratio of two adjacent segments, or of two adjacent processes in `python -m bench check --against`),
so that whatever moves both sides of a pair cancels. A training throughput (images over the total time of a run,
a mean rather than a median) gets a percentile bootstrap interval over its segments instead (`sum_ci`).
tests/test_bench_stats.py checks the coverage on synthetic series and the decision rule's false alarms on
simulated A/A runs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
MIN_VALUES = 6  # the fewest values whose order statistics give a 95% interval of the median (96.9%)


def _covers(n: int) -> np.ndarray:
    """coverage[j] of the interval [x_(j+1), x_(n-j)] (1-based) of n values: 1 - 2 P(Bin(n, 1/2) <= j)."""
    from scipy.stats import binom

    return 1 - 2 * binom.cdf(np.arange(n // 2 + 1), n, 0.5)


@functools.lru_cache(maxsize=1024)
def order_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """0-based ranks (lo, hi) of the order statistics that hold the median of n independent values with at
    least `confidence`, as close together as that allows; None when n is too small."""
    if n < 1:
        return None
    lo = int(np.count_nonzero(_covers(n) >= confidence)) - 1  # coverage falls as the ranks move inwards
    return None if lo < 0 else (lo, n - 1 - lo)


def coverage(n: int, confidence: float = CONFIDENCE) -> float | None:
    """The exact coverage of the interval order_ranks(n) gives."""
    ranks = order_ranks(n, confidence)
    return None if ranks is None else float(_covers(n)[ranks[0]])


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The distribution-free interval of the median of independent `values` (None: too few of them)."""
    ranks = order_ranks(len(values), confidence)
    if ranks is None:
        return None
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return float(ordered[ranks[0]]), float(ordered[ranks[1]])


def blocks(samples: Sequence[float], block: int) -> list[np.ndarray]:
    """`samples` cut into consecutive blocks of `block` values; a short last block joins the one before."""
    a = np.asarray(samples, dtype=np.float64)
    block = max(1, int(block))
    cuts = list(range(block, len(a) - block + 1, block))
    return [p for p in np.split(a, cuts) if len(p)]


def blocked_median_ci(
    samples: Sequence[float], block: int, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """The interval of the median of a series of calls, over the medians of its blocks of `block` calls."""
    return median_ci([float(np.median(b)) for b in blocks(samples, block)], confidence)


def ratio_ci(ratios: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The interval of the median of paired ratios (each pair: two adjacent measurements, one per side)."""
    return median_ci(ratios, confidence)


def sum_ci(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """A percentile bootstrap interval of the total of `values` (the seconds of a run's segments: a rate is
    images over their total), resampling the segments; seeded, so the same values give the same interval."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) < MIN_VALUES:
        return None
    rng = np.random.default_rng(seed)
    totals = a[rng.integers(0, len(a), size=(resamples, len(a)))].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(totals, [tail, 100 - tail])
    return float(low), float(high)


def half_width(ci: Sequence[float] | None, center: float | None) -> float | None:
    """Half the interval's width over its centre figure: the x of `p50 ± x%` (None without an interval)."""
    if ci is None or center is None or not center or any(v is None for v in ci):
        return None
    return (ci[1] - ci[0]) / 2 / abs(center)


def rate_ci(ci: Sequence[float] | None, work: float) -> tuple[float, float] | None:
    """The interval of a rate (images/s) from the interval of the time its `work` took: work/high, work/low."""
    if ci is None or not ci[0] or not ci[1]:
        return None
    return work / ci[1], work / ci[0]


# The regression check (python -m bench check --against REF): `change` is head / base of a speed (above 1:
# head is faster), with its interval over the rounds' pairs.
REGRESSED, OK, SLOWER, UNDECIDED = "regressed", "ok", "slower", "undecided"
OPEN = (UNDECIDED, SLOWER)  # verdicts whose interval holds 1 - threshold: more rounds could still tell


def decide(ci: Sequence[float] | None, threshold: float) -> str:
    """regressed: the whole interval lies below 1 - threshold (a slowdown beyond it, with 95% confidence).
    ok: none of it does (no slowdown of `threshold` or more). slower: all of it is below 1 but part above
    1 - threshold (slower, not surely beyond the threshold). undecided: it holds both 1 and 1 - threshold, so
    it cannot tell no change from a regression: more rounds, or a quieter machine, would."""
    if ci is None:
        return UNDECIDED
    low, high = ci
    floor = 1 - threshold
    if high < floor:
        return REGRESSED
    if low >= floor:
        return OK
    return SLOWER if high < 1 else UNDECIDED
