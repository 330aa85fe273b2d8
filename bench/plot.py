"""Pictures of a benchmark run: latency against batch size, throughput against threads, deployment costs.

    pytest --benchmark-only --bench-threads all --benchmark-json=run.json   # a run with a thread sweep
    python -m bench plot run.json                                          # reports/bench/*.png
    python -m bench plot run.json --out docs                               # elsewhere

Three PNG files, one panel per model, one colour per runtime (the same in each):
  latency.png     p50 latency of one call against batch size, log-log, with whiskers from p90 to p99, at the
                  run's largest thread count: where each runtime wins, and how much its tail moves
  threads.png     images/s at the largest batch against threads, from a run that swept them
                  (--bench-threads all); a run at one thread count draws none, and says so
  deployment.png  cold start, peak memory and artifact size side by side
Rows measured contended (other processes took more than CONTENDED of the CPUs' time) are drawn hollow. The
machine, the versions and the threads are in every title. matplotlib is the `plots` extra.
"""

from __future__ import annotations

import io
from pathlib import Path

from bench.results import contended, deployment_rows, load, machine_of, matching, rows_of
from bench.runtimes import LABELS, in_order, label
from mnist_zoo import plots
from mnist_zoo.util import UserError, atomic_write

OUT = Path("reports/bench")
PANEL = (4.0, 4.0)  # inches per panel (plots.DPI pixels per inch), title and legend included
MIN_PANELS = 2  # figures are at least this many panels wide, so that titles and legends fit
COLOURS = {runtime: f"C{i}" for i, runtime in enumerate(LABELS)}
MARKERS = dict(zip(LABELS, "osD^vPX*hd", strict=True))
PLUGIN_STYLE = ("k", "p")  # a plugin runtime's colour and marker: black pentagons


def _machine_line(doc: dict) -> str:
    m = machine_of(doc)
    v = m.get("versions") or {}
    cpus = m.get("cpus_available") or m.get("cores")
    return (
        f"{m.get('cpu', '?')}, {cpus:g} CPUs; torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}"
        + (f", openvino {str(v['openvino']).split('-')[0]}" if v.get("openvino") else "")
    )


def _figure(panels: int, title: str):
    from matplotlib.figure import Figure

    size = (PANEL[0] * max(panels, MIN_PANELS), PANEL[1])
    fig = Figure(figsize=size, dpi=plots.DPI, layout="constrained")  # no pyplot: no global state, no display
    fig.suptitle(title, fontsize=10)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=plots.DPI)
    # A palette: the same picture in a third of the bytes.
    image = Image.open(buffer).convert("RGB").quantize(256)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def _point(ax, x: float, y: float, runtime: str, row: dict, **kw) -> None:
    colour = COLOURS.get(runtime, PLUGIN_STYLE[0])
    face = "none" if contended(row) else colour  # hollow: measured while other processes took the CPUs
    ax.plot([x], [y], MARKERS.get(runtime, PLUGIN_STYLE[1]), color=colour, mfc=face, ms=6, **kw)


def _short_time(seconds: float, _=None) -> str:
    for scale, unit in ((1e-6, "µs"), (1e-3, "ms")):
        if seconds < scale * 1000:
            return f"{seconds / scale:g} {unit}"
    return f"{seconds:g} s"


def _log_axis(axis, formatter) -> None:
    """Ticks at 1, 2 and 5 of every decade, labelled by `formatter` (log axes of few decades have few ticks)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(formatter))
    axis.set_minor_formatter(NullFormatter())


def _legend(fig, runtimes: list[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            color=COLOURS.get(rt, PLUGIN_STYLE[0]),
            marker=MARKERS.get(rt, PLUGIN_STYLE[1]),
            label=label(rt),
            lw=1.5,
        )
        for rt in runtimes
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False
    )


def latency(doc: dict, rows: list[dict], path: Path) -> Path:
    from matplotlib.ticker import NullLocator

    inference = matching(rows, kind="inference", device="cpu")
    threads = max(r["threads"] for r in inference)
    inference = matching(inference, threads=threads)
    models = list(dict.fromkeys(r["model"] for r in inference))
    what = "p50 (points), p90 to p99 (whiskers), hollow: contended"
    title = f"Latency of one call: {what}; {threads} thread(s)\n{_machine_line(doc)}"
    fig, axes = _figure(len(models), title)
    runtimes = in_order(r["runtime"] for r in inference)
    for model, ax in zip(models, axes, strict=True):
        for i, runtime in enumerate(runtimes):
            mine = sorted(matching(inference, model=model, runtime=runtime), key=lambda r: r["batch"])
            dodge = 10 ** (0.02 * (i - (len(runtimes) - 1) / 2))  # side by side, so whiskers do not overlap
            batches = [r["batch"] * dodge for r in mine]
            ax.plot(
                batches,
                [r["p50_s"] for r in mine],
                "-",
                color=COLOURS.get(runtime, PLUGIN_STYLE[0]),
                lw=1.2,
                alpha=0.8,
            )
            for x, r in zip(batches, mine, strict=True):
                ax.vlines(x, r["p90_s"], r["p99_s"], color=COLOURS.get(runtime, PLUGIN_STYLE[0]), lw=1.2)
                _point(ax, x, r["p50_s"], runtime, r)
        ax.set(xscale="log", yscale="log", title=model, xlabel="batch size (images per call, log)")
        batches = sorted({r["batch"] for r in inference})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        _log_axis(ax.yaxis, _short_time)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("latency per call (log)")
    _legend(fig, runtimes)
    return _save(fig, path)


def throughput(doc: dict, rows: list[dict], path: Path) -> Path:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    inference = matching(rows, kind="inference", device="cpu")
    batch = max(r["batch"] for r in inference)
    inference = matching(inference, batch=batch)
    models = list(dict.fromkeys(r["model"] for r in inference))
    counts = sorted({r["threads"] for r in inference})
    title = f"Throughput at batch {batch} against threads; hollow: contended\n{_machine_line(doc)}"
    fig, axes = _figure(len(models), title)
    runtimes = in_order(r["runtime"] for r in inference)
    for model, ax in zip(models, axes, strict=True):
        for runtime in runtimes:
            mine = sorted(matching(inference, model=model, runtime=runtime), key=lambda r: r["threads"])
            ips = [r["images_per_second"] for r in mine]
            ax.plot(
                [r["threads"] for r in mine],
                ips,
                "-",
                color=COLOURS.get(runtime, PLUGIN_STYLE[0]),
                lw=1.2,
                alpha=0.8,
            )
            for r in mine:
                _point(ax, r["threads"], r["images_per_second"], runtime, r)
        ax.set(title=model, xlabel="threads per runtime", ylim=(0, None))
        ax.set_xlim(min(counts) - 0.5, max(counts) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("images per second (at the p50 latency)")
    _legend(fig, runtimes)
    return _save(fig, path)


def deployment(doc: dict, rows: list[dict], path: Path) -> Path:
    found = deployment_rows(rows)
    models = list(dict.fromkeys(m for m, _ in found))
    runtimes = in_order(k[1] for k in found)
    costs = [  # title, axis label, field, scale, log axis
        ("cold start: new process to first answer", "seconds (log)", "cold_start_s", 1, True),
        ("peak resident memory of that process", "MiB", "peak_rss_mb", 1, False),
        ("size of the file the runtime loads", "KiB (log)", "artifact_bytes", 2**10, True),
    ]
    how = next((r["deployment"] for r in found.values() if r["deployment"].get("runs")), None)
    how = f"{how['threads']} thread(s), medians of fresh processes" if how else "cold start not measured"
    title = f"Deployment costs per model and runtime ({how}; hatched: contended)\n{_machine_line(doc)}"
    fig, axes = _figure(3, title)
    width = 0.8 / max(1, len(runtimes))
    for ax, (name, unit, field, scale, log) in zip(axes, costs, strict=True):
        for i, runtime in enumerate(runtimes):
            for j, model in enumerate(models):
                r = found.get((model, runtime))
                if r is None or r.get(field) is None:
                    continue
                busy = field == "cold_start_s" and contended(r["deployment"])  # memory, size: load-free
                x, value = j + (i - (len(runtimes) - 1) / 2) * width, r[field] / scale
                ax.bar(
                    x,
                    value,
                    width,
                    color=COLOURS.get(runtime, PLUGIN_STYLE[0]),
                    hatch="///" if busy else None,
                )
                label = f"{value:.2g}" if value < 10 else f"{value:,.0f}"
                ax.text(x, value, label, ha="center", va="bottom", rotation=90, fontsize=6)
        if not any(r.get(field) is not None for r in found.values()):
            note = "not measured\n(--bench-deploy-runs 0, --bench-quick)"
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set(title=name, ylabel=unit, xticks=range(len(models)), xticklabels=models)
        if log:
            ax.set_yscale("log")
            _log_axis(ax.yaxis, lambda v, _: f"{v:g}")
        ax.margins(y=0.15)  # room for the labels above the bars
        ax.grid(True, axis="y", alpha=0.3)
    _legend(fig, runtimes)
    return _save(fig, path)


def plot_run(file: str | Path, out: str | Path = OUT, notes: list[str] | None = None) -> list[Path]:
    """Write the pictures of the run in `file` (a pytest-benchmark JSON with mnist-zoo rows) into `out`; why a
    picture was not drawn goes into `notes`."""
    if not plots.available():
        raise UserError("matplotlib is not installed (pip install 'mnist-zoo[plots]')")
    doc = load(file)
    rows = rows_of(doc)
    inference = matching(rows, kind="inference", device="cpu")
    if not inference:
        raise UserError(
            f"{file} holds no CPU inference rows to plot (run: pytest --benchmark-only -k inference)"
        )
    notes = [] if notes is None else notes
    out = Path(out)
    written = [latency(doc, rows, out / "latency.png")]
    if len({r["threads"] for r in inference}) > 1:
        written.append(throughput(doc, rows, out / "threads.png"))
    else:
        only = inference[0]["threads"]
        notes.append(
            f"threads.png not drawn: every row ran at {only} thread(s); a sweep draws it "
            "(pytest --benchmark-only --bench-threads all --benchmark-json=run.json)"
        )
    if any(r.get("artifact_bytes") is not None for r in rows):
        written.append(deployment(doc, rows, out / "deployment.png"))
    else:
        notes.append("deployment.png not drawn: no row carries deployment costs (--bench-deploy-runs)")
    return written
