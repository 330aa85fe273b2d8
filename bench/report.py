"""Rich tables of a benchmark run: machine header, accuracy, training, targets, inference latency.

    python -m bench report results.json          # a --benchmark-json file or an autosaved .benchmarks/... one
    pytest --benchmark-only                        # prints the same tables at the end of the session

Inference tables group rows by model and batch; the fastest runtime of each batch (and thread count) is in bold
green with a star, and a row whose spread (IQR / median) is over 10% is marked "noisy": its figures moved a lot
while it was measured, so re-run it before trusting a difference.
"""

from __future__ import annotations

import math
from typing import TextIO

from rich.console import Console
from rich.table import Table

from bench import results
from bench.runtimes import LABELS, RUNTIMES
from bench.timing import NOISY_SPREAD


def fmt_time(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
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


def header(machine: dict) -> str:
    v = machine.get("versions") or {}
    peak = machine.get("peak") or {}
    threads = ", ".join(str(t) for t in machine.get("threads") or []) or "?"
    lines = [
        f"[bold]CPU[/] {machine.get('cpu')}, {machine.get('cores')} cores; threads per runtime: {threads}; "
        f"training threads: {machine.get('train_threads') or '?'}"
        f"{'   [yellow](quick mode)[/]' if machine.get('quick') else ''}",
        f"[bold]GPU[/] {machine.get('cuda') or 'none (CUDA rows skipped)'}; onnxruntime providers: "
        f"{', '.join(machine.get('ort_providers') or []) or '-'}",
        f"[bold]versions[/] torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}, onnx {v.get('onnx')}, "
        f"python {v.get('python')}",
    ]
    if peak.get("flops"):
        lines.append(f"[bold]peak[/] {peak['flops'] / 1e9:.0f} GFLOP/s FP32 ({peak['how']})")
    return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> Table | None:
    acc = [r for r in rows if r.get("kind") == "accuracy"]
    if not acc:
        return None
    runtimes = [rt for rt in RUNTIMES if any(r["runtime"] == rt for r in acc)]
    t = Table(title="Test accuracy (10,000 real test images) in each runtime", title_justify="left")
    t.add_column("model")
    t.add_column("device")
    t.add_column("floor", justify="right")
    for rt in runtimes:
        t.add_column(LABELS[rt], justify="right")
    t.add_column("agreement with eager (min)", justify="right")
    t.add_column("max logit diff (fp32)", justify="right")
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in acc):
        mine = {r["runtime"]: r for r in acc if r["model"] == model and r["device"] == device}
        cells = []
        for rt in runtimes:
            r = mine.get(rt)
            ok = r is not None and r["accuracy"] >= r["floor"]
            cells.append(
                "-" if r is None else f"{'' if ok else '[red]'}{r['accuracy']:.2%}{'' if ok else '[/]'}"
            )
        exports = [r for rt, r in mine.items() if rt != "eager"]
        agree = min((r["agreement"] for r in exports), default=None)
        fp32 = [r["max_abs_logit_diff"] for r in exports if results.precision(r["runtime"]) == "fp32"]
        t.add_row(model, device, fmt_pct(results.TARGET_ACCURACY.get(model), 1), *cells, fmt_pct(agree),
                  f"{max(fp32):.1e}" if fp32 else "-")  # fmt: skip
    return t


def training_table(rows: list[dict]) -> Table | None:
    train = [r for r in rows if r.get("kind") in ("epoch", "time-to-accuracy", "tutorial")]
    if not train:
        return None
    t = Table(
        title="Training (default recipe) vs the tutorial pipeline, same machine, same run",
        title_justify="left",
    )
    for col in ("model", "device", "s / epoch", "images/s", "vs tutorial", "to target", "target",
                "to 98.4%", "tutorial 5 epochs / zoo to 98.4%"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("model", "device") else "right")
    keys = dict.fromkeys((r["model"], r["device"]) for r in train if r["kind"] != "tutorial")
    for model, device in keys:
        e = next(
            (r for r in train if r["kind"] == "epoch" and r["model"] == model and r["device"] == device), {}
        )
        a = next((r for r in train if r["kind"] == "time-to-accuracy" and r["model"] == model
                  and r["device"] == device), {})  # fmt: skip
        to_target = (
            fmt_time(a.get("seconds_to_target"))
            if a.get("reached")
            else ("[red]not reached[/]" if a else "-")
        )
        t.add_row(model, device, fmt_time(e.get("epoch_seconds")), _num(e.get("images_per_second")),
                  fmt_x(e.get("vs_tutorial")), to_target, fmt_pct(a.get("target"), 1),
                  fmt_time(a.get("seconds_to_tutorial_accuracy")), fmt_x(a.get("tutorial_accuracy_speedup")))  # fmt: skip
    for r in (r for r in train if r["kind"] == "tutorial"):
        t.add_row(f"[dim]tutorial pipeline ({r['model']})[/]", r["device"], fmt_time(60_000 / r["images_per_second"]),
                  _num(r["images_per_second"]), "1.00x", "-", "-", "-",
                  f"[dim]5 epochs: {fmt_time(r['five_epochs_seconds_derived'])} (derived)[/]")  # fmt: skip
    if any(r["kind"] == "tutorial" for r in train):
        t.caption = ("tutorial: per-sample PIL transforms, 4-worker DataLoader, batch 32. Its 5-epoch time is derived "
                     "as 300,000 images / its measured images/s, not run. Times to accuracy count training only.")  # fmt: skip
    return t


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def targets_table(rows: list[dict]) -> Table | None:
    found = results.targets(rows)
    if not found:
        return None
    t = Table(title="Targets from the issues", title_justify="left")
    for col in ("target", "measured", "needed", "met", "note"):
        t.add_column(col, justify="right" if col in ("measured", "needed") else "left")
    for g in found:
        value = f"{g['value']:.2f}{g['unit']}" if g["unit"] == "x" else fmt_time(g["value"])
        needed = ("≥ " if g["higher_is_better"] else "≤ ") + (
            f"{g['target']:g}x" if g["unit"] == "x" else f"{g['target']:g} s"
        )
        t.add_row(g["name"], value, needed, "[green]yes[/]" if g["met"] else "[red]no[/]", g["note"])
    return t


def inference_tables(rows: list[dict], machine: dict) -> list[Table]:
    inf = [r for r in rows if r.get("kind") == "inference"]
    peak = (
        (machine.get("peak") or {}).get("flops") or (inf[0].get("peak") or {}).get("flops") if inf else None
    )
    tables = []
    for model, device in dict.fromkeys((r["model"], r["device"]) for r in inf):
        mine = [r for r in inf if r["model"] == model and r["device"] == device]
        macs = mine[0].get("macs")
        title = f"Inference: {model} on {device}"
        cores = machine.get("cores") or mine[0].get("cores") or 1
        ceiling = results.ceiling_images_per_second(macs, peak, 1, cores) if device == "cpu" else None
        if ceiling:
            title += (f" (ceiling {ceiling:,.0f} images/s per core = peak FLOP/s per core / "
                      f"(2 x {macs:,} multiply-adds per image))")  # fmt: skip
        t = Table(title=title, title_justify="left")
        for col in ("batch", "runtime", "threads", "p50", "p90", "p99", "images/s", "vs eager", "IQR/median"):
            t.add_column(col, justify="left" if col == "runtime" else "right")
        if ceiling:
            t.add_column("% of ceiling", justify="right")
        for batch in sorted({r["batch"] for r in mine}):
            t.add_section()
            group = sorted(
                (r for r in mine if r["batch"] == batch),
                key=lambda r: (r["threads"], RUNTIMES.index(r["runtime"])),
            )
            best = {
                th: min((r for r in group if r["threads"] == th), key=lambda r: r["p50_s"])
                for th in {r["threads"] for r in group}
            }
            for r in group:
                fastest = best[r["threads"]] is r
                style = "bold green" if fastest else ""
                noisy = r["iqr_over_median"] > NOISY_SPREAD
                spread = f"{r['iqr_over_median']:.0%}" + (" [yellow]noisy[/]" if noisy else "")
                cells = [str(batch), ("★ " if fastest else "  ") + LABELS[r["runtime"]], str(r["threads"]),
                         fmt_time(r["p50_s"]), fmt_time(r["p90_s"]), fmt_time(r["p99_s"]),
                         _num(r["images_per_second"]), fmt_x(r.get("speedup_vs_eager")), spread]  # fmt: skip
                if ceiling:  # int8 kernels do integer work, which the FP32 ceiling does not bound
                    share = r["images_per_second"] / (ceiling * min(r["threads"], cores))
                    cells.append("-" if results.precision(r["runtime"]) == "int8" else f"{share:.1%}")
                t.add_row(*cells, style=style)
        if ceiling:
            t.caption = ("% of ceiling: FP32 rows only. The ceiling uses the nominal clock; a CPU boosting above it "
                         "can pass 100%.")  # fmt: skip
        tables.append(t)
    return tables


def threads_lines(rows: list[dict]) -> list[str]:
    out = []
    for c in results.thread_comparison(rows):
        p50 = ", ".join(f"{th} thread(s) {fmt_time(s)}" for th, s in c["p50_s"].items())
        out.append(f"lenet batch 1, {LABELS[c['runtime']]}: p50 {p50} -> fastest with {c['best_threads']}")
    return out


def render(doc: dict, file: TextIO, width: int | None = None, color: bool = False) -> None:
    """Print every table of `doc` (a results document) to `file`."""
    console = Console(
        file=file,
        width=width or (None if color else 140),
        force_terminal=color,
        no_color=not color,
        highlight=False,
    )
    rows = results.derive(results.rows_of(doc))
    machine = results.machine_of(doc)
    console.print(header(machine))
    for table in (accuracy_table(rows), training_table(rows), targets_table(rows)):
        if table is not None:
            console.print(table)
    for table in inference_tables(rows, machine):
        console.print(table)
    for line in threads_lines(rows):
        console.print(line)
