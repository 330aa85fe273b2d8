"""The tables of a benchmark run (the summary at the end of `pytest --benchmark-only`, and `python -m bench
report`), from the data of bench/results.py.

    python -m bench report results.json    # a --benchmark-json file or an autosaved .benchmarks/... one
    pytest --benchmark-only                 # prints the same tables at the end of the session

Made to be read at 100 columns: units in the headers, and marks as short symbols explained under each table:
`±x%` is half the width of the figure's 95% interval over the figure; `?` marks a figure whose interval is
wider than UNCERTAIN (more samples, or a quieter machine, would tell); `!63%` marks a row during which other
processes used 63% of the CPUs' time (over CONTENDED: its times are the load's, no target is judged from it);
`★` the fastest runtime of its batch and thread count.
"""

from __future__ import annotations

import math
import os
from typing import TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from bench.results import (
    collapsed,
    contended,
    deployment_rows,
    derive,
    eager_reference,
    first,
    machine_of,
    matching,
    ratio,
    rows_of,
    targets,
    uncertain,
)
from bench.runtimes import in_order, label
from bench.stats import half_width
from mnist_zoo.targets import (
    CONTENDED,
    TARGET_ACCURACY,
    TUTORIAL_ACCURACY,
    TUTORIAL_IMAGES,
    UNCERTAIN,
    precision,
)

VERSIONS_SHOWN = ("torch", "onnxruntime", "openvino", "onnx", "python")  # in the header; all are in the JSON
# Runtimes as column headers, where a table has one column per runtime (runtimes.label names them in cells)
SHORT = {"eager": "eager", "torchscript": "TS", "compile": "compile", "ort-web": "ORT web"}
LEGEND = (
    f"±: half the 95% interval; ? uncertain (interval over ±{UNCERTAIN:.0%}); !N%: contended, other processes "
    f"used N% of the CPUs (over {CONTENDED:.0%}: the load's figure, no target judged from it)"
)


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


def fmt_bytes(n: float | None, unit: str = "KiB") -> str:
    return "-" if n is None else f"{n / 2 ** {'KiB': 10, 'MiB': 20}[unit]:,.0f} {unit}"


def fmt_pm(interval, value: float | None) -> str:
    """' ±1.2%': half the 95% interval's width over the figure ('' without an interval)."""
    width = half_width(interval, value)
    if width is None:
        return ""
    return f" ±{width:.1%}" if width < 0.1 else f" ±{width:.0%}"


def marks(*rows: dict) -> str:
    """'!63%' if any of the rows a figure comes from was contended (the busiest's share), '?' if any is
    uncertain; '' for none."""
    busiest = max(rows, key=lambda r: r.get("contention") or 0.0)
    found = [f"!{busiest['contention']:.0%}"] if contended(busiest) else []
    found += ["?"] if any(uncertain(r) for r in rows) else []
    return f"[yellow]{' '.join(found)}[/]" if found else ""


def table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    """A table of our look: light lines, one space either side of a cell, numbers right-aligned."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), caption_justify="left")
    for (
        col
    ) in columns:  # never cut with an ellipsis: a long cell folds; a header keeps its longest word whole
        words = max(len(w) for w in col.split()) if col.strip() else 1
        t.add_column(col, justify="right" if col in right else "left", overflow="fold", min_width=words)
    return t


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
        f"[yellow]{len(busy)} row(s) contended[/] (over {CONTENDED:.0%}): no target is judged from them"
        if busy
        else f"no row over {CONTENDED:.0%}"
    )
    start = machine.get("busy_at_start")
    at_start = f", {start:.0%} at start" if start is not None else ""
    cpus = machine.get("cpus_available") or machine.get("cores")
    return "\n".join(
        [
            f"[bold]CPU[/] {machine.get('cpu')}, {cpus} CPUs available; threads per runtime: {threads}; "
            f"training threads: {machine.get('train_threads') or '?'}{quick}",
            f"[bold]load[/] {contention}{at_start}; {marked}",
            f"[bold]GPU[/] {machine.get('cuda') or 'none (CUDA rows skipped)'}; onnxruntime providers: {providers}",
            "[bold]versions[/] " + ", ".join(f"{n} {v.get(n) or 'not installed'}" for n in VERSIONS_SHOWN),
        ]
    )


def accuracy_table(rows: list[dict]) -> Table | None:
    acc = [r for r in matching(rows, kind="accuracy") if precision(r["runtime"]) != "bf16"]
    if not acc:
        return None
    runtimes = in_order(r["runtime"] for r in acc)
    cols = ("model", "floor", *(SHORT.get(rt, label(rt)) for rt in runtimes), "agree min", "Δ logits")
    t = table("Test accuracy (10,000 real test images) in each runtime", *cols, right=cols[1:])
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in acc):
        mine = {r["runtime"]: r for r in matching(acc, model=model, device=device)}
        cells = []
        for r in (mine.get(rt) for rt in runtimes):
            shown = fmt_pct(r["accuracy"]) if r else "-"
            cells.append(shown if not r or r["accuracy"] >= r["floor"] else f"[red]{shown}[/]")
        exports = [r for rt, r in mine.items() if rt != "eager"]
        agree = min((r["agreement"] for r in exports), default=None)
        fp32 = [r["max_abs_logit_diff"] for r in exports if precision(r["runtime"]) == "fp32"]
        name = model if device == "cpu" else f"{model} ({device})"
        t.add_row(
            name,
            fmt_pct(TARGET_ACCURACY.get(model), 1),
            *cells,
            fmt_pct(agree),
            f"{max(fp32):.0e}" if fp32 else "-",
        )
    t.caption = (
        "agree min: the least share of predictions equal to eager's; Δ logits: largest difference, fp32"
    )
    return t


def bf16_accuracy_table(rows: list[dict]) -> Table | None:
    """The bf16 runtimes' rows (--bench-precision bf16), a row each: beside the fp32 ones they would not fit 100
    columns."""
    acc = [r for r in matching(rows, kind="accuracy") if precision(r["runtime"]) == "bf16"]
    if not acc:
        return None
    cols = ("model", "runtime", "accuracy", "floor", "agree", "agree floor", "Δ logits")
    t = table("Test accuracy in bf16, against fp32 PyTorch eager", *cols, right=cols[2:])
    for r in acc:

        def judged(value: float, floor: float) -> str:
            return fmt_pct(value) if value >= floor else f"[red]{fmt_pct(value)}[/]"

        t.add_row(
            r["model"] if r["device"] == "cpu" else f"{r['model']} ({r['device']})",
            label(r["runtime"]),
            judged(r["accuracy"], r["floor"]),
            fmt_pct(r["floor"], 1),
            judged(r["agreement"], r["agreement_floor"]),
            fmt_pct(r["agreement_floor"]),
            f"{r['max_abs_logit_diff']:.2g}",
        )
    t.caption = "agree: predictions equal to fp32 eager's; Δ logits: the largest difference (not judged)"
    return t


def _precision(r: dict) -> str:
    """' bf16' after a row's name when it ran in bf16 (fp32 rows, and files from before precision, say nothing)."""
    return f" {r['precision']}" if r.get("precision") not in (None, "fp32") else ""


def training_table(rows: list[dict]) -> Table | None:
    """Training speed: the zoo's default recipe, the tutorial pipeline and the peer recipe, in images/s."""
    train = [r for r in rows if r.get("kind") in ("epoch", "tutorial", "peer")]
    if not train:
        return None
    cols = ("model", "device", "s/epoch", "images/s", "vs tutorial", "marks")
    t = table("Training speed (default recipe) vs the tutorial pipeline, same run", *cols, right=cols[2:5])
    for e in matching(train, kind="epoch"):
        tutorial = first(train, kind="tutorial", model=e["model"])
        vs = fmt_x(e.get("vs_tutorial")) + fmt_pm(e.get("vs_tutorial_ci"), e.get("vs_tutorial"))
        ips = fmt_num(e.get("images_per_second")) + fmt_pm(
            e.get("images_per_second_ci"), e.get("images_per_second")
        )
        t.add_row(
            e["model"] + _precision(e),
            e["device"],
            fmt_time(e.get("epoch_seconds")),
            ips,
            vs,
            marks(e, *([tutorial] if tutorial else [])),
        )
    for r in matching(train, kind="tutorial"):
        ips = r["images_per_second"]
        t.add_row(
            f"[dim]tutorial ({r['model']})[/]",
            r["device"],
            fmt_time(60_000 / ips),
            fmt_num(ips) + fmt_pm(r.get("images_per_second_ci"), ips),
            "1.00x",
            marks(r),
        )
    for r in matching(train, kind="peer"):
        t.add_row(
            f"[dim]peer recipe{_precision(r)}[/]",
            r["device"],
            fmt_time(r["train_seconds"]),
            fmt_num(r["images_per_second"]),
            "-",
            marks(r),
        )
    notes = ["vs tutorial: median of adjacent zoo/tutorial pairs, ± over the pairs."]
    if matching(train, kind="tutorial"):
        notes.insert(0, "tutorial: per-sample PIL transforms, 4-worker DataLoader, batch 32.")
    if matching(train, kind="peer"):
        notes.append("peer recipe: train_mnist_fast's one epoch (bench/peer.py).")
    t.caption = " ".join(notes)
    return t


def accuracy_time_table(rows: list[dict]) -> Table | None:
    """Time to accuracy: each model's race recipe (lenet: fast) to its target, and to the tutorial's final
    accuracy."""
    found = matching(rows, kind="time-to-accuracy")
    if not found:
        return None
    to_tutorial = f"to {TUTORIAL_ACCURACY:.1%}"
    cols = ("model", "target", "to target", "/ peer", to_tutorial, "tutorial ÷ zoo", "marks")
    t = table("Time to accuracy (default recipe unless named, training time only)", *cols, right=cols[1:6])
    peer = first(rows, kind="peer")
    for a in found:
        to_target = fmt_time(a.get("seconds_to_target")) if a.get("reached") else "[red]not reached[/]"
        speedup = a.get("tutorial_accuracy_speedup")
        tutorial = first(rows, kind="tutorial", model=a["model"])
        sources = [a, *([peer] if a.get("vs_peer") else []), *([tutorial] if speedup else [])]
        name = a["model"] if a["device"] == "cpu" else f"{a['model']} ({a['device']})"
        if a.get("recipe") not in (None, "default"):
            name += f", {a['recipe']}"
        name += _precision(a)
        cells = (fmt_pct(a.get("target"), 1), to_target, fmt_x(a.get("vs_peer")))
        cells += (
            fmt_time(a.get("seconds_to_tutorial_accuracy")),
            fmt_x(speedup) + fmt_pm(a.get("tutorial_accuracy_speedup_ci"), speedup),
        )
        t.add_row(name, *cells, marks(*sources))
    for r in matching(rows, kind="peer"):
        t.add_row(
            f"[dim]peer recipe{_precision(r)}[/]",
            f"{fmt_pct(r['accuracy'])} in 1 epoch",
            fmt_time(r["train_seconds"]),
            "1.00x",
            "-",
            "-",
            marks(r),
        )
    t.caption = (
        f"/ peer: lenet's time to its target over the peer recipe's one epoch at the same precision. tutorial ÷ zoo: the tutorial's 5 "
        f"epochs (derived, not run: {TUTORIAL_IMAGES:,} images at its paired speed) over the zoo's time "
        f"{to_tutorial}."
    )
    return t


def scaling_table(rows: list[dict]) -> Table | None:
    """Training images/s on 1 and 2 data-parallel processes and on one process's batch slices
    (bench/test_scaling.py), with the scaling efficiency of each against one process."""
    found = matching(rows, kind="scaling")
    if not found:
        return None
    cols = ("device", "engine", "processes", "threads each", "images/s", "efficiency", "accuracy", "marks")
    t = table("Training scaling (one epoch of lenet, fresh processes)", *cols, right=cols[2:7])
    for r in found:
        eff = fmt_pct(r.get("scaling_efficiency"), 0) if r.get("scaling_efficiency") else "-"
        engine = f"{r['engine']} ({r['backend']})" if r.get("backend") else r["engine"]
        cells = (str(r["processes"]), str(r["threads"]), fmt_num(r["images_per_second"]), eff)
        t.add_row(r["device"], engine, *cells, fmt_pct(r["test_accuracy"]), marks(r))
    t.caption = "efficiency: images/s / (workers x one process's images/s), workers: processes (ddp) or threads (slices)"
    return t


def targets_table(rows: list[dict]) -> tuple[Table | None, list[str]]:
    """The targets as a table, and a line of note for each (the notes are long: under the table)."""
    found = targets(rows)
    if not found:
        return None, []
    t = table("Targets", "#", "target", "measured", "needed", "met", right=("#", "measured", "needed"))
    notes = []
    for i, g in enumerate(found, 1):
        value = fmt_time(g["value"]) if g["unit"] == "s" else fmt_x(g["value"])
        value += fmt_pm(g.get("ci"), g["value"])
        needed = {"x": f"≥ {g['target']:g}x", "s": f"≤ {g['target']:g} s", "ratio": f"≤ {g['target']:g}x"}[
            g["unit"]
        ]
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]not judged[/]"}[g["met"]]
        t.add_row(str(i), g["name"], value, needed, met)
        if g["note"]:
            notes.append(f"  {i}. {g['note']}")
    return t, notes


def inference_tables(rows: list[dict]) -> list[Table]:
    inference = matching(rows, kind="inference")
    tables = []
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in inference):
        mine = matching(inference, model=model, device=device)
        cols = ("batch", "runtime", "thr", "p50", "p99", "images/s", "vs eager", "marks")
        t = table(
            f"Inference: {model} on {device}",
            *cols,
            right=("batch", "thr", "p50", "p99", "images/s", "vs eager"),
        )
        t.caption = (
            "★ fastest of its batch and threads (thr). vs eager: against eager's p50 at its fastest thread count (@N when "
            "that is not the row's; ! after it: eager's row was contended). " + LEGEND
        )
        for batch in sorted({r["batch"] for r in mine}):
            t.add_section()
            group = matching(mine, batch=batch)
            order = in_order(r["runtime"] for r in group)
            group.sort(key=lambda r: (r["threads"], order.index(r["runtime"])))
            fastest = [
                min(matching(group, threads=th), key=lambda r: r["p50_s"])
                for th in {r["threads"] for r in group}
            ]
            for r in group:
                eager = eager_reference(mine, r)
                vs = fmt_x(r.get("speedup_vs_eager")) + fmt_pm(
                    r.get("speedup_vs_eager_ci"), r.get("speedup_vs_eager")
                )
                if eager and eager is not r and eager["threads"] != r["threads"]:
                    vs += f" @{eager['threads']}"
                vs += "!" if eager and eager is not r and contended(eager) else ""
                cells = [
                    str(batch),
                    ("★ " if r in fastest else "  ") + label(r["runtime"]),
                    str(r["threads"]),
                    fmt_time(r["p50_s"]) + fmt_pm(r.get("p50_ci_s"), r["p50_s"]),
                    fmt_time(r["p99_s"]),
                    fmt_num(r["images_per_second"]),
                    vs,
                    marks(r),
                ]
                t.add_row(*cells, style="bold green" if r in fastest else "")
        tables.append(t)
    return tables


def deployment_table(rows: list[dict]) -> Table | None:
    """Per model and runtime: the artifact's size, the cold start and the peak memory of a fresh process."""
    found = deployment_rows(rows)
    if not found:
        return None
    cols = ("model", "runtime", "artifact", "cold start", "peak RSS", "marks")
    t = table("Deployment: what a fresh process pays before its first answer", *cols, right=cols[2:5])
    how: dict = {}
    for model in dict.fromkeys(m for m, _ in found):
        t.add_section()
        for runtime in in_order(rt for m, rt in found if m == model):
            r = found[model, runtime]
            d = r.get("deployment") or {}
            how = how or (d if d.get("runs") else {})
            peak = None if r.get("peak_rss_mb") is None else r["peak_rss_mb"] * 2**20
            cold = "-" if r.get("cold_start_s") is None else f"{r['cold_start_s']:.2f} s"
            t.add_row(
                model,
                label(runtime),
                fmt_bytes(r["artifact_bytes"]),
                cold,
                fmt_bytes(peak, "MiB"),
                marks({"contention": d.get("contention")}),
            )
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
    """Per model and batch (the smallest and largest), the fastest thread count of each runtime and its speed
    over the fewest threads measured (shown when a run measured more than one thread count)."""
    inference = matching(rows, kind="inference", device="cpu")
    if len({r["threads"] for r in inference}) < 2:
        return None
    batches = sorted({min(r["batch"] for r in inference), max(r["batch"] for r in inference)})
    runtimes = list(dict.fromkeys(r["runtime"] for r in inference))
    fewest = min(r["threads"] for r in inference)
    t = table(
        "Threads: the fastest count per runtime",
        "model",
        *(SHORT.get(rt, label(rt)) for rt in runtimes),
        right=tuple(SHORT.get(rt, label(rt)) for rt in runtimes),
    )
    t.caption = (
        f"the thread count with the lowest p50, and its speed over {fewest} thread(s); ! either row contended, "
        "? either uncertain"
    )
    for model in dict.fromkeys(r["model"] for r in inference):
        for batch in batches:
            cells = []
            for runtime in runtimes:
                mine = matching(inference, runtime=runtime, model=model, batch=batch)
                best = min(mine, key=lambda r: r["p50_s"], default=None)
                base = first(mine, threads=fewest)
                speed = ratio(base.get("p50_s"), best["p50_s"]) if best else None
                if best is None:
                    cells.append("-")
                    continue
                rows_ = (best, *([base] if base else []))
                symbols = ("!" if any(contended(r) for r in rows_) else "") + (
                    "?" if any(map(uncertain, rows_)) else ""
                )
                cells.append(
                    f"{best['threads']} {fmt_x(speed)}" + (f" [yellow]{symbols}[/]" if symbols else "")
                )
            t.add_row(f"{model} b{batch}", *cells)
    return t


def collapse_lines(rows: list[dict]) -> list[str]:
    """Every collapse of PyTorch eager, in words."""
    cases = dict.fromkeys((r["model"], r["device"], r["batch"]) for r in matching(rows, kind="inference"))
    return [f"[yellow]{why}[/]" for case in cases if (why := collapsed(rows, *case))]


def make_console(file: TextIO, width: int | None = None, color: bool | None = None) -> Console:
    """A console for the tables: a terminal's width; in a file or a pipe, COLUMNS or else 100 columns."""
    color = file.isatty() if color is None else color
    width = width or (None if color or os.environ.get("COLUMNS") else 100)
    return Console(file=file, width=width, force_terminal=color, no_color=not color, highlight=False)


def render(doc: dict, file: TextIO, width: int | None = None, color: bool = False) -> None:
    """Print every table of `doc` (a results document) to `file`."""
    console = make_console(file, width, color)
    rows = derive(rows_of(doc))
    console.print(header(machine_of(doc), rows))
    goals, notes = targets_table(rows)
    summary = [
        accuracy_table(rows),
        bf16_accuracy_table(rows),
        training_table(rows),
        accuracy_time_table(rows),
        scaling_table(rows),
        goals,
    ]
    for t in summary:
        if t is not None:
            console.print(t)
    for line in notes:
        console.print(line, soft_wrap=False)
    if any(t is not None for t in summary[2:5]):
        console.print(LEGEND, style="dim")
    for t in [deployment_table(rows), threads_table(rows), *inference_tables(rows)]:
        if t is not None:
            console.print(t)
    for line in collapse_lines(rows):
        console.print(line)
