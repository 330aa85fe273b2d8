"""The results of a benchmark run: our rows of a pytest-benchmark JSON, the ratios between them, the issues'
targets, and the rich tables that show them (the live summary and `python -m bench report`; the regression
check reads the same rows).

    python -m bench report results.json    # a --benchmark-json file or an autosaved .benchmarks/... one
    pytest --benchmark-only                 # prints the same tables at the end of the session

    >>> doc = load("results.json")
    >>> rows = derive(rows_of(doc))         # our rows, with speed-ups and training ratios filled in

A row is the `extra_info` of one benchmark (kind: inference, accuracy, epoch, time-to-accuracy, tutorial,
scaling).
Derived figures are ratios of rows measured in the same run on the same machine: speed-up vs PyTorch eager at
its fastest thread count; zoo training vs the tutorial pipeline for the same model. In the tables the fastest
runtime of each batch and thread count is starred; a row whose spread (IQR / median) is over NOISY_SPREAD is
marked "noisy" (its figures moved while it was measured), and a row during which other processes used more
than CONTENDED of the CPUs' time is marked "contended" (its times are the machine's load, not its speed). No
target is called met from a contended row, nor from a ratio whose reference row is contended or collapsed.
Beside them: the deployment costs of each runtime and model (artifact size, cold start, peak memory; their own
contention marks the cold start), and, when a run measured several thread counts, the fastest per runtime.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table

from bench.runtimes import LABELS, RUNTIMES
from mnist_zoo.targets import (
    COLLAPSED,
    CONTENDED,
    NOISY_SPREAD,
    TARGET_ACCURACY,
    TARGET_EPOCH_SECONDS,
    TARGET_PEER_RATIO,
    TARGET_RUNTIME_SPEEDUP,
    TARGET_TRAIN_SPEEDUP,
    TARGET_TTA_SECONDS,
    TARGET_TUTORIAL_ACCURACY_SPEEDUP,
    TUTORIAL_ACCURACY,
    TUTORIAL_IMAGES,
    precision,
)
from mnist_zoo.util import UserError

FORMAT = "mnist-zoo/bench/1"  # extra_info["format"] of every row we write
VERSIONS_SHOWN = ("torch", "onnxruntime", "openvino", "onnx", "python")  # in the header; all are in the JSON


def load(path: str | Path) -> dict:
    """A pytest-benchmark JSON file holding mnist-zoo rows; any other file is a one-line UserError."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise UserError(f"{path} is not a pytest-benchmark results file (no 'benchmarks' list)")
    if not rows_of(doc):
        how = "run: pytest bench --benchmark-only --benchmark-json FILE"
        raise UserError(f"{path} holds no mnist-zoo benchmark rows ({how})")
    return doc


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


def contended(row: dict) -> bool:
    return (row.get("contention") or 0.0) > CONTENDED


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
    """Fill in the ratios between rows of the same run (idempotent); returns `rows`."""
    for r in rows:
        kind = r.get("kind")
        tutorial = first(rows, kind="tutorial", model=r.get("model"))
        if kind == "inference":
            eager = eager_reference(rows, r)
            r["speedup_vs_eager"] = ratio(eager.get("p50_s"), r["p50_s"])
            r["eager_threads"] = eager.get("threads")
        elif kind == "epoch":
            # The median of adjacent zoo/tutorial pairs (bench/test_training.py): both sides of each of those
            # ratios are timed seconds apart, where this row and the tutorial row may be minutes apart.
            r["vs_tutorial"] = tutorial.get("vs_tutorial_paired")
        elif kind == "time-to-accuracy":
            # The peer recipe's one epoch is its whole training: lenet's time to 99% is set against it.
            peer = first(rows, kind="peer", device=r.get("device"))
            r["vs_peer"] = ratio(r.get("seconds_to_target"), peer.get("train_seconds"))
            # The tutorial's 5 epochs over the zoo's images to the same accuracy, at the paired speed ratio:
            # images are the recipe's (the same on any machine), and the ratio of speeds is interleaved.
            images = ratio(TUTORIAL_IMAGES, r.get("images_to_tutorial_accuracy"))
            paired = tutorial.get("vs_tutorial_paired")
            r["tutorial_accuracy_speedup"] = images * paired if images and paired else None
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The speed targets this run measured, each {name, value, target, met, unit, note}. `met` is None, and the
    note says why, when a row it comes from was contended or its reference collapsed: not measured, not met."""
    found = []

    def add(name: str, value: float | None, target: float, unit: str, note: str, *sources: dict) -> None:
        if value is None:
            return
        # "x": a speed-up to reach; "s" and "ratio": seconds, or a share of another row's, to stay under
        met = value >= target if unit == "x" else value <= target
        busy = [r for r in sources if contended(r)]
        if busy:
            met, note = (
                None,
                f"not measured: contended ({max(r['contention'] for r in busy):.0%} of the CPUs busy)",
            )
        found.append(dict(name=name, value=value, target=target, met=met, unit=unit, note=note))

    epoch, tta = first(rows, kind="epoch", model="lenet"), first(rows, kind="time-to-accuracy", model="lenet")
    tutorial = first(rows, kind="tutorial", model="lenet")
    pair = "zoo and tutorial timed in adjacent pairs"
    add(
        "lenet training images/s vs tutorial pipeline",
        epoch.get("vs_tutorial"),
        TARGET_TRAIN_SPEEDUP,
        "x",
        pair,
        tutorial,
    )
    to_target = f"lenet training seconds to {TARGET_ACCURACY['lenet']:.0%} test accuracy"
    add(to_target, tta.get("seconds_to_target"), TARGET_TTA_SECONDS, "s", "", tta)
    peer = first(rows, kind="peer")
    name = "lenet to 99% over the peer recipe's training time"
    add(name, tta.get("vs_peer"), TARGET_PEER_RATIO, "ratio", "peer: train_mnist_fast, 1 epoch", tta, peer)
    derived = f"tutorial time derived: {TUTORIAL_IMAGES:,} images at the paired speed ratio"
    name = f"lenet to the tutorial's {TUTORIAL_ACCURACY:.1%}, vs the tutorial's 5 epochs"
    add(name, tta.get("tutorial_accuracy_speedup"), TARGET_TUTORIAL_ACCURACY_SPEEDUP, "x", derived, tutorial)
    for model in ("mlp", "dnn"):
        e = first(rows, kind="epoch", model=model)
        add(
            f"{model} seconds per epoch (about 1 s)", e.get("epoch_seconds"), TARGET_EPOCH_SECONDS, "s", "", e
        )
    measured = [
        r
        for r in matching(rows, kind="inference", model="lenet", batch=1, device="cpu")
        if r.get("speedup_vs_eager")
    ]
    for threads in sorted({r["threads"] for r in measured}):
        best = max(matching(measured, threads=threads), key=lambda r: r["speedup_vs_eager"])
        eager = eager_reference(rows, best)
        name = f"lenet batch 1, fastest runtime at {threads} thread(s) vs eager"
        note = f"{best['runtime']} vs eager at {eager['threads']} thread(s)"
        add(name, best["speedup_vs_eager"], TARGET_RUNTIME_SPEEDUP, "x", note, best, eager)
        if found and found[-1]["met"] and (why := collapsed(rows, "lenet", "cpu", 1)):
            found[-1].update(met=None, note=why)
    return found


def fmt_time(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def fmt_num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def header(machine: dict, rows: list[dict]) -> str:
    v = machine.get("versions") or {}
    threads = ", ".join(str(t) for t in machine.get("threads") or []) or "?"
    quick = "   [yellow](quick mode)[/]" if machine.get("quick") else ""
    providers = ", ".join(machine.get("ort_providers") or []) or "-"
    shares = [r["contention"] for r in rows if r.get("contention") is not None]
    busy = [r for r in rows if contended(r)]
    contention = (
        f"contention: {min(shares):.0%}-{max(shares):.0%} of the CPUs' time used by other processes"
        if shares
        else "contention: not measured"
    )
    marked = (
        f"[yellow]{len(busy)} row(s) contended[/] (over {CONTENDED:.0%}): no target is called met from them"
        if busy
        else f"no row over {CONTENDED:.0%}"
    )
    start = machine.get("busy_at_start")
    at_start = f", {start:.0%} at start" if start is not None else ""
    return "\n".join(
        [
            f"[bold]CPU[/] {machine.get('cpu')}, {machine.get('cpus_available') or machine.get('cores')} CPUs available; "
            f"threads per runtime: {threads}; training threads: {machine.get('train_threads') or '?'}{quick}",
            f"[bold]load[/] {contention}{at_start}; {marked}",
            f"[bold]GPU[/] {machine.get('cuda') or 'none (CUDA rows skipped)'}; onnxruntime providers: {providers}",
            "[bold]versions[/] " + ", ".join(f"{n} {v.get(n) or 'not installed'}" for n in VERSIONS_SHOWN),
        ]
    )


def accuracy_table(rows: list[dict]) -> Table | None:
    acc = matching(rows, kind="accuracy")
    if not acc:
        return None
    runtimes = [rt for rt in RUNTIMES if matching(acc, runtime=rt)]
    t = Table(title="Test accuracy (10,000 real test images) in each runtime", title_justify="left")
    t.add_column("model")
    t.add_column("device")
    for col in ("floor", *(LABELS[rt] for rt in runtimes), "agreement with eager (min)"):
        t.add_column(col, justify="right")
    t.add_column("max logit diff (fp32)", justify="right")
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in acc):
        mine = {r["runtime"]: r for r in matching(acc, model=model, device=device)}
        cells = []
        for r in (mine.get(rt) for rt in runtimes):
            shown = fmt_pct(r["accuracy"]) if r else "-"
            cells.append(shown if not r or r["accuracy"] >= r["floor"] else f"[red]{shown}[/]")
        exports = [r for rt, r in mine.items() if rt != "eager"]
        agree = min((r["agreement"] for r in exports), default=None)
        fp32 = [r["max_abs_logit_diff"] for r in exports if precision(r["runtime"]) == "fp32"]
        diff = f"{max(fp32):.1e}" if fp32 else "-"
        t.add_row(model, device, fmt_pct(TARGET_ACCURACY.get(model), 1), *cells, fmt_pct(agree), diff)
    return t


def flags(*rows: dict) -> str:
    """' contended 63%' and ' noisy' markers of a row, for the tables; of several rows that one figure compares,
    the most contended one's and noisy if any is."""
    busiest = max(rows, key=lambda r: r.get("contention") or 0.0)
    busy = f" [yellow]contended {busiest['contention']:.0%}[/]" if contended(busiest) else ""
    noisy = any(r.get("iqr_over_median", 0) > NOISY_SPREAD for r in rows)
    return busy + (" [yellow]noisy[/]" if noisy else "")


def training_table(rows: list[dict]) -> Table | None:
    train = [r for r in rows if r.get("kind") in ("epoch", "time-to-accuracy", "tutorial", "peer")]
    if not train:
        return None
    title = "Training (default recipe) vs the tutorial pipeline, same machine, same run"
    t = Table(title=title, title_justify="left")
    t.add_column("model")
    t.add_column("device")
    to_tutorial = f"to {TUTORIAL_ACCURACY:.1%}"
    for col in ("s / epoch", "images/s", "vs tutorial", "to target", "target", "/ peer", to_tutorial):
        t.add_column(col, justify="right")
    t.add_column(f"tutorial 5 epochs / zoo {to_tutorial}", justify="right")
    zoo = [r for r in train if r["kind"] in ("epoch", "time-to-accuracy")]
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in zoo):
        e = first(train, kind="epoch", model=model, device=device)
        a = first(train, kind="time-to-accuracy", model=model, device=device)
        peer = first(train, kind="peer", device=device)
        if a.get("reached"):
            to_target = fmt_time(a.get("seconds_to_target")) + flags(a)
        else:
            to_target = "[red]not reached[/]" if a else "-"
        speed = (fmt_time(e.get("epoch_seconds")), fmt_num(e.get("images_per_second")) + flags(e))
        tutorial = (
            fmt_x(e.get("vs_tutorial")),
            to_target,
            fmt_pct(a.get("target"), 1),
            # a ratio of two rows: marked if either was contended, even where lenet's own row was quiet
            fmt_x(a.get("vs_peer")) + (flags(a, peer) if a.get("vs_peer") else ""),
        )
        to_984 = (fmt_time(a.get("seconds_to_tutorial_accuracy")), fmt_x(a.get("tutorial_accuracy_speedup")))
        t.add_row(model, device, *speed, *tutorial, *to_984)
    tutorials = matching(train, kind="tutorial")
    for r in tutorials:
        ips = r["images_per_second"]
        five_epochs = f"[dim]5 epochs: {fmt_time(r['five_epochs_seconds_derived'])} (derived)[/]"
        name = f"[dim]tutorial pipeline ({r['model']})[/]"
        per_epoch = fmt_time(60_000 / ips)
        t.add_row(
            name, r["device"], per_epoch, fmt_num(ips) + flags(r), "1.00x", "-", "-", "-", "-", five_epochs
        )
    peers = matching(train, kind="peer")
    for r in peers:
        name, ips = "[dim]peer recipe (train_mnist_fast)[/]", fmt_num(r["images_per_second"]) + flags(r)
        reached = f"{fmt_pct(r['accuracy'])} in 1 epoch"
        t.add_row(name, r["device"], fmt_time(r["train_seconds"]), ips, "-", reached, "-", "1.00x", "-", "-")
    notes = ["Times to accuracy count training only."]
    if tutorials:
        notes.insert(
            0,
            "tutorial: per-sample PIL transforms, 4-worker DataLoader, batch 32. vs tutorial: median of adjacent "
            f"zoo/tutorial pairs. Its 5-epoch time is {TUTORIAL_IMAGES:,} images at its measured images/s, not "
            "run.",
        )
    if peers:
        notes.append(
            "/ peer: lenet's time to its target over the peer recipe's one epoch (its accuracy: mean of its seeds)."
        )
    t.caption = " ".join(notes)
    return t


def scaling_table(rows: list[dict]) -> Table | None:
    """Training images/s on 1 and 2 data-parallel processes and on one process's batch slices
    (bench/test_scaling.py), with the scaling efficiency of each against one process."""
    found = matching(rows, kind="scaling")
    if not found:
        return None
    t = Table(title="Training scaling (one epoch of lenet, fresh processes)", title_justify="left")
    for col in (
        "device",
        "engine",
        "processes",
        "threads each",
        "images/s",
        "scaling efficiency",
        "test accuracy",
    ):
        t.add_column(col, justify="left" if col in ("device", "engine") else "right")
    for r in found:
        eff = fmt_pct(r.get("scaling_efficiency"), 0) if r.get("scaling_efficiency") else "-"
        engine = f"{r['engine']} ({r['backend']})" if r.get("backend") else r["engine"]
        speed = fmt_num(r["images_per_second"]) + flags(r)
        t.add_row(
            r["device"],
            engine,
            str(r["processes"]),
            str(r["threads"]),
            speed,
            eff,
            fmt_pct(r["test_accuracy"]),
        )
    t.caption = "efficiency: images/s / (workers x one process's images/s), workers = processes (ddp) or threads (slices)"
    return t


def targets_table(rows: list[dict]) -> Table | None:
    found = targets(rows)
    if not found:
        return None
    t = Table(title="Targets", title_justify="left")
    for col in ("target", "measured", "needed", "met", "note"):
        t.add_column(col, justify="right" if col in ("measured", "needed") else "left")
    for g in found:
        value = fmt_time(g["value"]) if g["unit"] == "s" else fmt_x(g["value"])
        needed = {"x": f"≥ {g['target']:g}x", "s": f"≤ {g['target']:g} s", "ratio": f"≤ {g['target']:g}x"}
        needed = needed[g["unit"]]
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]not measured[/]"}[g["met"]]
        t.add_row(g["name"], value, needed, met, g["note"])
    return t


def inference_tables(rows: list[dict]) -> list[Table]:
    inference = matching(rows, kind="inference")
    tables = []
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in inference):
        mine = matching(inference, model=model, device=device)
        t = Table(title=f"Inference: {model} on {device}", title_justify="left")
        for col in ("batch", "runtime", "threads", "p50", "p90", "p99", "images/s", "vs eager", "IQR/median"):
            t.add_column(col, justify="left" if col == "runtime" else "right")
        t.caption = (
            "vs eager: p50 against PyTorch eager's at its fastest thread count (in brackets; 'contended' there:"
            " eager's row was, and the ratio measures the load)"
        )
        for batch in sorted({r["batch"] for r in mine}):
            t.add_section()
            group = matching(mine, batch=batch)
            group.sort(key=lambda r: (r["threads"], list(LABELS).index(r["runtime"])))
            threads = {r["threads"] for r in group}
            fastest = [min(matching(group, threads=th), key=lambda r: r["p50_s"]) for th in threads]
            for r in group:
                eager = eager_reference(mine, r)
                reference = (
                    f"{eager['threads']}, [yellow]contended[/]" if contended(eager) else eager.get("threads")
                )
                vs_eager = fmt_x(r.get("speedup_vs_eager")) + (f" ({reference})" if reference else "")
                cells = [
                    str(batch),
                    ("★ " if r in fastest else "  ") + LABELS[r["runtime"]],
                    str(r["threads"]),
                    *(fmt_time(r[p]) for p in ("p50_s", "p90_s", "p99_s")),
                    fmt_num(r["images_per_second"]),
                    vs_eager,
                    f"{r['iqr_over_median']:.0%}{flags(r)}",
                ]
                t.add_row(*cells, style="bold green" if r in fastest else "")
        tables.append(t)
    return tables


def fmt_bytes(n: float | None, unit: str = "KiB") -> str:
    return "-" if n is None else f"{n / 2 ** {'KiB': 10, 'MiB': 20}[unit]:,.0f} {unit}"


def deployment_rows(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(model, runtime) -> a row carrying that pair's deployment costs (every row of the pair carries the same)."""
    found: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r.get("kind") in ("inference", "accuracy") and r.get("artifact_bytes") is not None:
            found.setdefault((r["model"], r["runtime"]), r)
    return found


def deployment_table(rows: list[dict]) -> Table | None:
    """Per model and runtime: the artifact's size, the cold start and the peak memory of a fresh process."""
    found = deployment_rows(rows)
    if not found:
        return None
    t = Table(title="Deployment: what a fresh process pays before its first answer", title_justify="left")
    for col in ("model", "runtime", "artifact", "cold start", "peak RSS"):
        t.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    how: dict = {}
    for model in dict.fromkeys(m for m, _ in found):
        t.add_section()
        for runtime in (rt for rt in LABELS if (model, rt) in found):
            r = found[model, runtime]
            d = r.get("deployment") or {}
            how = how or (d if d.get("runs") else {})
            busy = flags({"contention": d.get("contention")})
            peak = None if r.get("peak_rss_mb") is None else r["peak_rss_mb"] * 2**20
            cells = (
                fmt_bytes(r["artifact_bytes"]),
                ("-" if r.get("cold_start_s") is None else f"{r['cold_start_s']:.2f} s") + busy,
                fmt_bytes(peak, "MiB"),
            )
            t.add_row(model, LABELS[runtime], *cells)
    t.caption = "artifact: the file the runtime loads (PyTorch eager and torch.compile: the checkpoint)"
    if how:
        t.caption += (
            f". Cold start: a new process from its start to its first answer (1 image), {how['threads']} "
            f"thread(s), median of {how['runs']} (torch.compile: fewer; it compiles in each); peak RSS: the "
            f"same processes after a batch of {how['peak_batch']}"
        )
    else:
        t.caption += "; cold start and peak memory not measured (--bench-deploy-runs 0, or --bench-quick)"
    return t


def threads_table(rows: list[dict]) -> Table | None:
    """Per runtime and model, the fastest thread count at batch 1 and at the largest batch, and its speed over
    the fewest threads measured (shown when a run measured more than one thread count)."""
    inference = matching(rows, kind="inference", device="cpu")
    if len({r["threads"] for r in inference}) < 2:
        return None
    batches = sorted({min(r["batch"] for r in inference), max(r["batch"] for r in inference)})
    models = list(dict.fromkeys(r["model"] for r in inference))
    fewest = min(r["threads"] for r in inference)
    t = Table(title="Threads: the fastest count per runtime", title_justify="left")
    t.add_column("runtime")
    for model in models:
        for batch in batches:
            t.add_column(f"{model} batch {batch}", justify="right")
    t.caption = f"the thread count with the lowest p50, and its speed over {fewest} thread(s)"
    for runtime in dict.fromkeys(r["runtime"] for r in inference):
        cells = []
        for model in models:
            for batch in batches:
                mine = matching(inference, runtime=runtime, model=model, batch=batch)
                best = min(mine, key=lambda r: r["p50_s"], default=None)
                base = first(mine, threads=fewest)
                speed = ratio(base.get("p50_s"), best["p50_s"]) if best else None
                cells.append(f"{best['threads']}  {fmt_x(speed)}{flags(best, base)}" if best else "-")
        t.add_row(LABELS[runtime], *cells)
    return t


def collapse_lines(rows: list[dict]) -> list[str]:
    """Every collapse of PyTorch eager, in words."""
    cases = dict.fromkeys((r["model"], r["device"], r["batch"]) for r in matching(rows, kind="inference"))
    return [f"[yellow]{why}[/]" for case in cases if (why := collapsed(rows, *case))]


def make_console(file: TextIO, width: int | None = None, color: bool | None = None) -> Console:
    """A console for the tables: without colour (a file or a pipe), 140 columns rather than an 80-column wrap."""
    color = file.isatty() if color is None else color
    width = width or (None if color else 140)
    return Console(file=file, width=width, force_terminal=color, no_color=not color, highlight=False)


def render(doc: dict, file: TextIO, width: int | None = None, color: bool = False) -> None:
    """Print every table of `doc` (a results document) to `file`."""
    console = make_console(file, width, color)
    rows = derive(rows_of(doc))
    console.print(header(machine_of(doc), rows))
    summary = [accuracy_table(rows), training_table(rows), scaling_table(rows), targets_table(rows)]
    summary.append(deployment_table(rows))
    for table in [*summary, threads_table(rows), *inference_tables(rows)]:
        if table is not None:
            console.print(table)
    for line in collapse_lines(rows):
        console.print(line)
