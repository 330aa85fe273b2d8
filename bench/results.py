"""The figures of a benchmark run, as data: our rows of a pytest-benchmark JSON, the ratios between them with
their intervals, and the targets they meet. bench/report.py shows them as tables; bench/check.py, plot.py and
history.py read them from here.

    >>> doc = load("results.json")          # a --benchmark-json file or an autosaved .benchmarks/... one
    >>> rows = derive(rows_of(doc))         # our rows, with speed-ups and training ratios filled in
    >>> targets(rows)                       # [{name, value, ci, target, met, unit, note}, ...]

A row is the `extra_info` of one benchmark (kind: inference, accuracy, epoch, time-to-accuracy, tutorial, peer,
scaling). Its figures carry 95% intervals (bench/stats.py): a latency row its p50's (`p50_ci_s`, over the
medians of its segments of calls) and images/s from it; a ratio measured in pairs its own (`speedup_paired_ci`,
`vs_tutorial_paired_ci`, over the pairs); a training row its images/s (`images_per_second_ci`). Derived figures
are ratios of rows of the same run: the speed-up against PyTorch eager's row at its fastest thread count (its
interval bounds the two rows' intervals: `ratio_bounds`) and zoo training against the tutorial pipeline.
A figure whose interval is wider than +-UNCERTAIN is `uncertain`; a row during which other processes used more
than CONTENDED of the CPUs' time is `contended` (its times are the machine's load, not its speed). No target is
judged from a contended row, from a ratio whose reference row collapsed, or from an interval that holds the
target itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench import stats
from bench.runtimes import LABELS
from mnist_zoo.schema import read_json
from mnist_zoo.targets import (
    COLLAPSED,
    CONTENDED,
    TARGET_ACCURACY,
    TARGET_EPOCH_SECONDS,
    TARGET_PEER_RATIO,
    TARGET_RUNTIME_SPEEDUP,
    TARGET_TRAIN_SPEEDUP,
    TARGET_TTA_SECONDS,
    TARGET_TUTORIAL_ACCURACY_SPEEDUP,
    TUTORIAL_ACCURACY,
    TUTORIAL_IMAGES,
    UNCERTAIN,
)
from mnist_zoo.util import UserError

FORMAT = "mnist-zoo/bench/1"  # extra_info["format"] of every row we write
PEER_MODEL = "lenet"  # the zoo model the peer recipe (bench/peer.py) is set against
# The figure of each row kind whose interval says whether the row is `uncertain`.
MAIN_FIGURE = {
    "inference": ("p50_s", "p50_ci_s"),
    "epoch": ("images_per_second", "images_per_second_ci"),
    "tutorial": ("vs_tutorial_paired", "vs_tutorial_paired_ci"),
}


def load(path: str | Path) -> dict:
    """A pytest-benchmark JSON file holding mnist-zoo rows, checked against RESULTS_SCHEMA (size and nesting
    capped before parsing); any other file, and a row with a field of the wrong type, is a one-line UserError
    naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    doc = read_json(path, RESULTS_SCHEMA, max_bytes=MAX_RESULTS_BYTES, max_values=MAX_RESULTS_VALUES)
    if not rows_of(doc):
        how = "run: pytest bench --benchmark-only --benchmark-json FILE"
        raise UserError(f"{path} holds no mnist-zoo benchmark rows ({how})")
    return doc


# --- what load() accepts: the fields our readers use, with their types ---------------------------------------

# pytest-benchmark's JSON keeps every row's raw timings (stats.data, one number a call timed): a quick run's file
# is over 8 MiB, a full run's tens of MB with ~3 million numbers. Past 64 MiB or 6 million values, refused: parsed,
# a number is 32 bytes, so the command stays under 1 GB whatever the file holds (docs/reliability.md).
MAX_RESULTS_BYTES = 64 << 20
MAX_RESULTS_VALUES = 6_000_000
_NUMBER = {"type": "number"}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}  # what a reader divides by
_OPTIONAL_NUMBER = {"type": ["number", "null"]}
_INTERVAL = {"type": ["array", "null"], "items": _NUMBER, "minItems": 2, "maxItems": 2}
_COUNT = {"type": "integer", "minimum": 1}
_NAME = {"type": "string"}
_OBJECT = {"type": ["object", "null"]}
ROW_FIELDS = {
    "format": {"const": FORMAT},
    "kind": _NAME,
    "model": _NAME,
    "runtime": {"enum": list(LABELS)},  # the tables and pictures know these (a label, a colour each)
    "device": _NAME,
    "engine": _NAME,
    "backend": {"type": ["string", "null"]},
    "fullname": {"type": ["string", "null"]},
    "batch": _COUNT,
    "threads": _COUNT,
    "eager_threads": {"type": ["integer", "null"]},
    "processes": _COUNT,
    "reached": {"type": ["boolean", "null"]},
    "quick": {"type": ["boolean", "null"]},
    "deployment": _OBJECT,
    "versions": _OBJECT,
    "artifact_bytes": {"type": ["integer", "null"]},
    **dict.fromkeys(("p50_s", "p90_s", "p99_s", "images_per_second", "train_seconds"), _POSITIVE),
    **dict.fromkeys(("accuracy", "floor", "agreement", "agreement_floor", "test_accuracy"), _NUMBER),
    "max_abs_logit_diff": _NUMBER,
    **dict.fromkeys(
        (
            "min_s",
            "contention",
            "speedup_paired",
            "speedup_vs_eager",
            "epoch_seconds",
            "vs_tutorial",
            "vs_tutorial_paired",
            "vs_peer",
            "seconds_to_target",
            "seconds_to_tutorial_accuracy",
            "images_to_tutorial_accuracy",
            "tutorial_accuracy_speedup",
            "target",
            "scaling_efficiency",
            "cold_start_s",
            "peak_rss_mb",
        ),
        _OPTIONAL_NUMBER,
    ),
    **{
        name: _INTERVAL for name in ("p50_ci_s", "speedup_paired_ci", "speedup_vs_eager_ci", "vs_tutorial_ci")
    },
    **{name: _INTERVAL for name in ("vs_tutorial_paired_ci", "images_per_second_ci")},
    "tutorial_accuracy_speedup_ci": _INTERVAL,
}
# The fields each kind's readers (report, plot, compare, check) take as given.
REQUIRED = {
    "inference": [
        "model",
        "runtime",
        "device",
        "batch",
        "threads",
        "p50_s",
        "p90_s",
        "p99_s",
        "images_per_second",
    ],
    "accuracy": [
        "model",
        "runtime",
        "device",
        "accuracy",
        "floor",
        "agreement",
        "agreement_floor",
        "max_abs_logit_diff",
    ],
    "epoch": ["model", "device"],
    "time-to-accuracy": ["model", "device", "reached"],
    "tutorial": ["model", "device", "images_per_second"],
    "peer": ["device", "accuracy", "train_seconds", "images_per_second"],
    "scaling": ["device", "engine", "processes", "threads", "images_per_second", "test_accuracy"],
}
ROW_SCHEMA = {
    "type": "object",
    "required": ["kind"],
    "properties": ROW_FIELDS,
    "allOf": [
        {"if": {"properties": {"kind": {"const": kind}}}, "then": {"required": fields}}
        for kind, fields in REQUIRED.items()
    ],
}
RESULTS_SCHEMA = {
    "type": "object",
    "required": ["benchmarks"],
    "properties": {
        "benchmarks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"fullname": _NAME, "extra_info": {"type": "object"}},
                # only our rows are held to ROW_SCHEMA: pytest-benchmark's own may carry anything
                "if": {
                    "properties": {
                        "extra_info": {"properties": {"format": {"const": FORMAT}}, "required": ["format"]}
                    },
                    "required": ["extra_info"],
                },
                "then": {"properties": {"extra_info": ROW_SCHEMA}},
            },
        },
        "machine_info": {"type": ["object", "null"], "properties": {"mnist_zoo": _OBJECT}},
        "commit_info": _OBJECT,
        "datetime": {"type": ["string", "null"]},
    },
}


def rows_of(doc: dict) -> list[dict]:
    """Our rows from a results document, each with the benchmark's fullname added (check reruns by it)."""
    rows = []
    for bench in doc.get("benchmarks", []):
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if isinstance(info, dict) and info.get("format") == FORMAT:
            info.setdefault("fullname", bench.get("fullname"))
            rows.append(info)
    return rows


def machine_of(doc: dict) -> dict:
    """The machine record of the run (bench/machine.py describe, in pytest-benchmark's machine_info)."""
    return (doc.get("machine_info") or {}).get("mnist_zoo") or {}


def matching(rows: list[dict], **fields) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in fields.items())]


def first(rows: list[dict], **fields) -> dict:
    """The first row with these field values, or {} (so that .get() of a figure gives None)."""
    return next(iter(matching(rows, **fields)), {})


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def ratio_bounds(a: Sequence[float] | None, b: Sequence[float] | None) -> list[float] | None:
    """Bounds of a / b from the intervals of two figures measured apart: [low a / high b, high a / low b] (at
    least 90% when each interval is an independent 95% one; wider than a paired interval, never narrower)."""
    if not a or not b or not b[0] or not b[1]:
        return None
    return [a[0] / b[1], a[1] / b[0]]


def contended(row: dict) -> bool:
    return (row.get("contention") or 0.0) > CONTENDED


def spread(row: dict) -> float | None:
    """The half-width of the row's main figure's interval over the figure (None: the row has none)."""
    value, interval = MAIN_FIGURE.get(row.get("kind"), (None, None))
    return stats.half_width(row.get(interval), row.get(value)) if value else None


def uncertain(row: dict) -> bool:
    """Its main figure's 95% interval is wider than +-UNCERTAIN: more samples, or a quieter machine, needed."""
    width = spread(row)
    return width is not None and width > UNCERTAIN


def eager_reference(rows: list[dict], row: dict) -> dict:
    """PyTorch eager's row for `row`'s model, device and batch at eager's fastest thread count ({} if none)."""
    same = {k: row[k] for k in ("model", "device", "batch")}
    return min(
        matching(rows, kind="inference", runtime="eager", **same), key=lambda r: r["p50_s"], default={}
    )


def collapsed(rows: list[dict], model: str, device: str, batch: int) -> str | None:
    """Why eager's figures for this model, device and batch are a collapse, not a speed (None if they are not):
    at more threads many times slower than at fewer, its thread team waited on cores other processes took."""
    eager = matching(rows, kind="inference", runtime="eager", model=model, device=device, batch=batch)
    if len(eager) < 2:
        return None
    fast, slow = min(eager, key=lambda r: r["p50_s"]), max(eager, key=lambda r: r["threads"])
    times = slow["p50_s"] / fast["p50_s"]
    if slow is fast or times < COLLAPSED:
        return None
    return (
        f"PyTorch eager collapsed: {model} batch {batch} at {slow['threads']} threads ran {times:.0f}x slower "
        f"than at {fast['threads']} (other processes took cores its thread team waits for)"
    )


def derive(rows: list[dict]) -> list[dict]:
    """Fill in the ratios between rows of the same run and their intervals (idempotent); returns `rows`."""
    for r in rows:
        kind = r.get("kind")
        tutorial = first(rows, kind="tutorial", model=r.get("model"))
        if kind == "inference":
            eager = eager_reference(rows, r)
            r["speedup_vs_eager"] = ratio(eager.get("p50_s"), r["p50_s"])
            r["eager_threads"] = eager.get("threads")
            if not eager and r.get("speedup_paired"):  # no eager row in this run: the interleaved one
                r.update(speedup_vs_eager=r["speedup_paired"], eager_threads=r["threads"])
                r["speedup_vs_eager_ci"] = r.get("speedup_paired_ci")
            elif eager is r:
                r["speedup_vs_eager_ci"] = None  # 1 by definition
            elif eager.get("threads") == r.get("threads") and r.get("speedup_paired_ci"):
                # the same pair of rows, measured interleaved inside this row: the tighter, paired interval
                r["speedup_vs_eager_ci"] = r["speedup_paired_ci"]
            else:
                r["speedup_vs_eager_ci"] = ratio_bounds(eager.get("p50_ci_s"), r.get("p50_ci_s"))
        elif kind == "epoch":
            # The median of adjacent zoo/tutorial pairs (bench/test_training.py): both sides of each of those
            # ratios are timed seconds apart, where this row and the tutorial row may be minutes apart.
            r["vs_tutorial"] = tutorial.get("vs_tutorial_paired")
            r["vs_tutorial_ci"] = tutorial.get("vs_tutorial_paired_ci")
        elif kind == "time-to-accuracy":
            # The peer recipe's one epoch is its whole training: lenet's time to 99% is set against it (the
            # peer is a lenet-sized network; the other models are not compared with it).
            peer = first(rows, kind="peer", device=r.get("device"), precision=r.get("precision"))
            if r.get("model") == PEER_MODEL:
                r["vs_peer"] = ratio(r.get("seconds_to_target"), peer.get("train_seconds"))
            # The tutorial's 5 epochs over the zoo's images to the same accuracy, at the paired speed ratio:
            # images are the recipe's (the same on any machine), and the ratio of speeds is interleaved.
            images = ratio(TUTORIAL_IMAGES, r.get("images_to_tutorial_accuracy"))
            paired, paired_ci = tutorial.get("vs_tutorial_paired"), tutorial.get("vs_tutorial_paired_ci")
            r["tutorial_accuracy_speedup"] = images * paired if images and paired else None
            r["tutorial_accuracy_speedup_ci"] = (
                [images * v for v in paired_ci] if images and paired_ci else None
            )
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The speed targets this run measured, each {name, value, ci, target, met, unit, note}. `met` is None, and
    the note says why, when a row it comes from was contended, its reference collapsed, or its interval holds
    the target: not judged, neither met nor missed."""
    found = []

    def add(name: str, value, target: float, unit: str, note: str, *sources: dict, ci=None) -> None:
        if value is None:
            return
        # "x": a speed-up to reach; "s" and "ratio": seconds, or a share of another row's, to stay under
        met = value >= target if unit == "x" else value <= target
        busy = [r for r in sources if contended(r)]
        if busy:
            share = max(r["contention"] for r in busy)
            met, note = None, f"not judged: contended ({share:.0%} of the CPUs busy with other processes)"
        elif ci and ci[0] <= target <= ci[1]:
            met, note = None, f"not judged: its 95% interval {ci[0]:.3g}-{ci[1]:.3g} holds the target"
        found.append(dict(name=name, value=value, ci=ci, target=target, met=met, unit=unit, note=note))

    epoch, tta = first(rows, kind="epoch", model="lenet"), first(rows, kind="time-to-accuracy", model="lenet")
    tutorial = first(rows, kind="tutorial", model="lenet")
    pair = "zoo and tutorial timed in adjacent pairs"
    ci = epoch.get("vs_tutorial_ci")
    name = "lenet training images/s vs tutorial pipeline"
    add(name, epoch.get("vs_tutorial"), TARGET_TRAIN_SPEEDUP, "x", pair, tutorial, ci=ci)
    to_target = f"lenet training seconds to {TARGET_ACCURACY['lenet']:.0%} test accuracy"
    add(to_target, tta.get("seconds_to_target"), TARGET_TTA_SECONDS, "s", "one run", tta)
    peer = first(rows, kind="peer")
    name = "lenet to 99% over the peer recipe's training time"
    add(name, tta.get("vs_peer"), TARGET_PEER_RATIO, "ratio", "peer: train_mnist_fast, 1 epoch", tta, peer)
    derived = f"{TUTORIAL_IMAGES:,} tutorial images at the paired speed ratio"
    name = f"lenet to the tutorial's {TUTORIAL_ACCURACY:.1%}, vs the tutorial's 5 epochs"
    ci = tta.get("tutorial_accuracy_speedup_ci")
    add(
        name,
        tta.get("tutorial_accuracy_speedup"),
        TARGET_TUTORIAL_ACCURACY_SPEEDUP,
        "x",
        derived,
        tutorial,
        ci=ci,
    )
    for model in ("mlp", "dnn"):
        e = first(rows, kind="epoch", model=model)
        name = f"{model} seconds per epoch (about 1 s)"
        seconds_ci = stats.rate_ci(e.get("images_per_second_ci"), e.get("images") or 0)
        add(name, e.get("epoch_seconds"), TARGET_EPOCH_SECONDS, "s", "", e, ci=seconds_ci)
    measured = [
        r
        for r in matching(rows, kind="inference", model="lenet", batch=1, device="cpu")
        if r.get("speedup_vs_eager")
    ]
    for threads in sorted({r["threads"] for r in measured}):
        best = max(matching(measured, threads=threads), key=lambda r: r["speedup_vs_eager"])
        eager = eager_reference(rows, best)
        name = f"lenet batch 1, fastest runtime at {threads} thread(s) vs eager"
        paired = "" if eager else ", interleaved in its row"
        note = f"{best['runtime']} vs eager at {best['eager_threads']} thread(s){paired}"
        ci = best.get("speedup_vs_eager_ci")
        add(name, best["speedup_vs_eager"], TARGET_RUNTIME_SPEEDUP, "x", note, best, eager, ci=ci)
        if found and found[-1]["met"] and (why := collapsed(rows, "lenet", "cpu", 1)):
            found[-1].update(met=None, note="not judged: " + why)
    return found


def deployment_rows(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(model, runtime) -> a row carrying that pair's deployment costs (every row of the pair carries the same)."""
    found: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r.get("kind") in ("inference", "accuracy") and r.get("artifact_bytes") is not None:
            found.setdefault((r["model"], r["runtime"]), r)
    return found
