"""Latency measurement on top of pytest-benchmark: warm up, size the rounds to a time budget, time one call
per round, measure the contention meanwhile, and compute the percentiles pytest-benchmark does not (p50, p90,
p99) from its raw samples.

    >>> stats = measure(benchmark, lambda: predictor.run(x), batch=64, budget_s=1.0)
    >>> stats["p50_s"], stats["images_per_second"], stats["contention"]
    >>> stats = measure(benchmark, run, batch=1, budget_s=1.0, reference=eager_run)   # interleaved with eager
    >>> stats["speedup_paired"]

One call per round (iterations=1), so every raw sample is one inference and the percentiles are percentiles of
single calls, not of averages over loops. With a `reference`, the timed rounds come in segments of about
SEGMENT_S, each right after a segment of reference calls (A B A B ...): the speed-up is the median over
segments of median(reference) / median(timed), so a machine whose speed drifts moves both sides alike.

With more than one thread, each side's thread pool keeps spinning for a while after its calls, on the cores the
other side needs: measured here (lenet, 2 threads), ONNX Runtime called right after PyTorch eager took 41 ms at
batch 1000 instead of 32, and eager right after ONNX Runtime 8 ms at batch 64 instead of 4, for about 60 ms.
So `settle_s` (SETTLE_S for multi-threaded rows) pauses, untimed, between the two sides' segments and then makes
one untimed call, and the segments are longer (SETTLED_SEGMENT_S) to keep those pauses cheap.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from mnist_zoo.cpu import Contention

# The first calls pay for lazy initialisation (allocators, oneDNN primitives, cuDNN tuning): not timed.
WARMUP_S = 0.2
MIN_WARMUP_CALLS = 5
MIN_ROUNDS, MAX_ROUNDS = 10, 20_000
SEGMENT_S = 0.05  # interleaved measurement: seconds of calls per segment, each side
SETTLE_S = 0.06  # pause for the other side's spinning threads to stop (ORT's spun for ~50 ms here)
SETTLED_SEGMENT_S = 0.2  # segments when settling: the pauses add about a third


def percentile_stats(samples: Sequence[float], batch: int) -> dict:
    """p50/p90/p99, mean, min, IQR/median and images/s (batch / p50) of per-call latencies in seconds."""
    if len(samples) == 0:
        raise ValueError("no timing samples")
    a = np.asarray(samples, dtype=np.float64)
    p25, p50, p75, p90, p99 = np.percentile(a, [25, 50, 75, 90, 99])
    return {
        "p50_s": float(p50),
        "p90_s": float(p90),
        "p99_s": float(p99),
        "mean_s": float(a.mean()),
        "min_s": float(a.min()),
        "iqr_over_median": float((p75 - p25) / p50) if p50 > 0 else float("nan"),
        "images_per_second": batch / float(p50) if p50 > 0 else float("nan"),
        "rounds": len(a),
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
    budget_s: float,
    min_rounds: int = MIN_ROUNDS,
    reference: Callable[[], object] | None = None,
    settle_s: float = 0.0,
) -> dict:
    """Warm up, then time `fn` with benchmark.pedantic (one call per round); returns percentile_stats, the time
    budget and the contention record (mnist_zoo.cpu.Contention). With `reference`, interleaved with it, and
    with `settle_s`, a pause between the two sides (see the module's docstring): also `speedup_paired` and the
    reference's p50. The samples stay in pytest-benchmark's stats, so --benchmark-json carries them too."""
    estimate = warm_up(fn)
    rounds = rounds_for(estimate, budget_s, min_rounds)
    segment = max(1, int((SETTLED_SEGMENT_S if settle_s else SEGMENT_S) / estimate))
    references: list[list[float]] = []
    calls = 0

    def settle(then: Callable[[], object]) -> None:
        if settle_s:
            time.sleep(settle_s)
            then()

    def before_round() -> None:  # pedantic's setup, not timed: a segment of reference calls every `segment`
        nonlocal calls
        if reference is not None and calls % segment == 0:
            settle(reference)
            references.append(_timed(reference, segment))
            settle(fn)
        calls += 1

    if reference is not None:
        warm_up(reference)
    with Contention() as contention:
        benchmark.pedantic(fn, setup=before_round, rounds=rounds, iterations=1)
    samples = benchmark.stats.stats.data
    stats = {**percentile_stats(samples, batch), "budget_s": budget_s, **contention.record()}
    if reference is not None:
        timed = [samples[i : i + segment] for i in range(0, len(samples), segment)]
        pairs = zip(references, timed, strict=True)
        stats["speedup_paired"] = statistics.median(np.median(r) / np.median(t) for r, t in pairs)
        stats["reference_p50_s"] = float(np.median(np.concatenate(references)))
        stats["pairing"] = f"{len(references)} segments of {segment} call(s), reference first"
        stats["settle_s"] = settle_s
    return stats
