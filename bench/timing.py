"""Latency measurement on top of pytest-benchmark: warm up, then time single calls in segments until the median
is known precisely enough (or a time cap), measure the contention meanwhile, and compute what pytest-benchmark
does not: p50, p90, p99 and the 95% confidence interval of the p50.

    >>> stats = measure(benchmark, lambda: predictor.run(x), batch=64, cap_s=1.0)
    >>> stats["p50_s"], stats["p50_ci_s"], stats["images_per_second"], stats["contention"], stats["stopped"]
    >>> stats = measure(benchmark, run, batch=1, cap_s=1.0, reference=eager_run)   # interleaved with eager
    >>> stats["speedup_paired"], stats["speedup_paired_ci"]

One call per sample, so the percentiles are percentiles of single calls, not of averages over loops. The calls
come in segments of about SEGMENT_S (an odd number of calls each, short enough for MIN_SEGMENTS of them to fit
in the cap, and for twice as many in MAX_ROUNDS calls: a call of a few microseconds would otherwise fill
MAX_ROUNDS in fewer segments than an interval needs). After each segment the 95% interval of the median is
taken over the segments' medians (bench/stats.py says why not over the single calls), and sampling stops once
its half-width is at most CI_TARGET of the p50 (`stopped: "precise"`), or when the timed calls have used
`cap_s` (`"time cap"`; never before MIN_SEGMENTS segments and `min_rounds` calls, so that every row has an
interval) or MAX_ROUNDS calls. A row that stopped at its cap with a wider interval is marked `uncertain` in the
tables. With a `reference`, each segment comes right after a segment of reference calls (A B A B ...) of about
the same duration (not the same number of calls: eager at batch 1 is often 5x slower than the runtime it is set
against, and equal counts spent most of a row on the reference): the speed-up is the median over these pairs
of median(reference) / median(timed), its interval is over the pairs, and sampling also waits for that interval
to reach CI_TARGET.

With more than one thread, each side's thread pool keeps spinning for a while after its calls, on the cores the
other side needs: measured here (lenet, 2 threads), ONNX Runtime called right after PyTorch eager took 41 ms at
batch 1000 instead of 32, and eager right after ONNX Runtime 8 ms at batch 64 instead of 4, for about 60 ms.
So `settle_s` (SETTLE_S for multi-threaded rows) pauses, untimed, between the two sides' segments and then makes
one untimed call, and the segments are longer (SETTLED_SEGMENT_S) to keep those pauses cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from bench import stats as ci
from mnist_zoo.cpu import Contention

# The first calls pay for lazy initialisation (allocators, oneDNN primitives, cuDNN tuning): not timed.
WARMUP_S = 0.2
MIN_WARMUP_CALLS = 5
MIN_ROUNDS, MAX_ROUNDS = 10, 20_000
MIN_SEGMENTS = 6  # the fewest segments whose medians give a 95% interval (the extremes of 6: 96.9%)
CI_TARGET = 0.01  # stop once the p50's 95% interval is within +-1% (ratios too, with a reference)
SEGMENT_S = 0.05  # seconds of calls per segment, each side
SETTLE_S = 0.06  # pause for the other side's spinning threads to stop (ORT's spun for ~50 ms here)
SETTLED_SEGMENT_S = 0.2  # segments when settling: the pauses add about a third


def percentile_stats(samples: Sequence[float], batch: int, block: int = 1) -> dict:
    """p50/p90/p99, mean, min, IQR/median, images/s (batch / p50) of per-call latencies in seconds, and the 95%
    interval of the p50 over blocks of `block` consecutive calls (`p50_ci_s`, None with under 6 blocks) and of
    images/s from it."""
    if len(samples) == 0:
        raise ValueError("no timing samples")
    a = np.asarray(samples, dtype=np.float64)
    p25, p50, p75, p90, p99 = np.percentile(a, [25, 50, 75, 90, 99])
    interval = ci.blocked_median_ci(a, block)
    return {
        "p50_s": float(p50),
        "p50_ci_s": list(interval) if interval else None,
        "p90_s": float(p90),
        "p99_s": float(p99),
        "mean_s": float(a.mean()),
        "min_s": float(a.min()),
        "iqr_over_median": float((p75 - p25) / p50) if p50 > 0 else float("nan"),
        "images_per_second": batch / float(p50) if p50 > 0 else float("nan"),
        "images_per_second_ci": list(ci.rate_ci(interval, batch) or []) or None,
        "rounds": len(a),
        "block": block,
    }


def warm_up(fn: Callable[[], object]) -> float:
    """Call fn for WARMUP_S seconds and at least MIN_WARMUP_CALLS times; returns the median time of the second
    half of the calls (an estimate of one warm call)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_WARMUP_CALLS or time.perf_counter() - start < WARMUP_S:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[len(times) // 2 :]))


def rounds_for(per_call_s: float, budget_s: float, min_rounds: int = MIN_ROUNDS) -> int:
    """How many single-call rounds fit in `budget_s`, clamped to [min_rounds, MAX_ROUNDS]."""
    wanted = int(budget_s / per_call_s) if per_call_s > 0 else MAX_ROUNDS
    return max(min_rounds, min(MAX_ROUNDS, wanted))


def segment_calls(per_call_s: float, segment_s: float = SEGMENT_S) -> int:
    """Calls per segment: about `segment_s` of them, an odd number (the median of an odd block is one call)."""
    n = max(1, int(segment_s / per_call_s)) if per_call_s > 0 else 1
    return n if n % 2 else n + 1


def _timed(fn: Callable[[], object], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(
    benchmark,
    fn: Callable[[], object],
    *,
    batch: int,
    cap_s: float,
    min_rounds: int = MIN_ROUNDS,
    reference: Callable[[], object] | None = None,
    settle_s: float = 0.0,
    target: float = CI_TARGET,
) -> dict:
    """Warm up, then time `fn` in segments until its p50's interval (and the speed-up's, with a `reference`)
    is within `target`, or the timed calls reach `cap_s` seconds or MAX_ROUNDS (see the module's docstring).
    Returns percentile_stats, how sampling went (`cap_s`, `target`, `segments`, `stopped`), the contention
    (mnist_zoo.cpu.Contention), and with a reference `speedup_paired`, `speedup_paired_ci` and the reference's
    p50. The single calls' times become pytest-benchmark's samples (its table, its JSON)."""
    estimate = warm_up(fn)
    reference_estimate = warm_up(reference) if reference is not None else 0.0
    # at least MIN_SEGMENTS segments within the cap, when the calls are short enough
    segment_s = min(SETTLED_SEGMENT_S if settle_s else SEGMENT_S, cap_s / MIN_SEGMENTS)
    segment = min(segment_calls(estimate, segment_s), MAX_ROUNDS // (2 * MIN_SEGMENTS) | 1)
    reference_segment = segment_calls(reference_estimate, segment * estimate)  # as long as fn's
    timed: list[list[float]] = []
    references: list[list[float]] = []
    state = {"stopped": "max rounds"}

    def settle(then: Callable[[], object]) -> None:
        if settle_s:
            time.sleep(settle_s)
            then()

    def precise() -> bool:
        medians = [float(np.median(t)) for t in timed]
        if len(medians) < MIN_SEGMENTS or len(medians) * segment < min_rounds:
            return False
        if (ci.half_width(ci.median_ci(medians), np.median(np.concatenate(timed))) or 1) > target:
            return False
        if reference is None:
            return True
        ratio = _ratios(references, timed)
        return (ci.half_width(ci.ratio_ci(ratio), float(np.median(ratio))) or 1) <= target

    def sample() -> None:  # pytest-benchmark times this whole loop once; its samples are replaced below
        spent = 0.0
        while len(timed) * segment < MAX_ROUNDS:
            if spent >= cap_s and len(timed) >= MIN_SEGMENTS and len(timed) * segment >= min_rounds:
                state["stopped"] = "time cap"
                return
            if reference is not None:
                settle(reference)
                references.append(_timed(reference, reference_segment))
                settle(fn)
            timed.append(_timed(fn, segment))
            spent += sum(timed[-1])
            if precise():
                state["stopped"] = "precise"
                return

    with Contention() as contention:
        benchmark.pedantic(sample, rounds=1, iterations=1)
    samples = [t for seg in timed for t in seg]
    benchmark.stats.stats.data[:] = samples
    out = {**percentile_stats(samples, batch, segment), **contention.record()}
    out.update(cap_s=cap_s, target=target, segments=len(timed), stopped=state["stopped"])
    if reference is not None:
        ratios = _ratios(references, timed)
        interval = ci.ratio_ci(ratios)
        out["speedup_paired"] = float(np.median(ratios))
        out["speedup_paired_ci"] = list(interval) if interval else None
        out["reference_p50_s"] = float(np.median(np.concatenate(references)))
        out["pairing"] = (
            f"{len(references)} segments of {segment} call(s), each after {reference_segment} of the reference"
        )
        out["settle_s"] = settle_s
    return out


def _ratios(references: list[list[float]], timed: list[list[float]]) -> list[float]:
    return [float(np.median(r) / np.median(t)) for r, t in zip(references, timed, strict=True)]
