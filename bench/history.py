"""What changed between two benchmark runs: their figures side by side, with the change of each.

    pytest --benchmark-only --benchmark-autosave      # every run saved by pytest-benchmark in .benchmarks/
    python -m bench compare                           # the two newest saved runs: then (older) vs now (newer)
    python -m bench compare 0003                      # saved run 0003 vs the newest
    python -m bench compare 0003 run.json             # any two, by pytest-benchmark's run number or by path

The runs are pytest-benchmark's own files, found with its own storage (FileStorage, the current machine's
folder of .benchmarks/), not a store of ours. Rows are matched by what they measured (model, runtime, batch,
threads, device); "change" is how many times better `now` is (above 1: faster, smaller; accuracy: points).
Changes beyond MOVED are coloured, unless either row was contended or uncertain, which is marked instead (`!N%`,
`?`, as in bench/report.py): figures of a shared machine move by 10-30% between runs on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.report import fmt_num, fmt_pct, fmt_time, marks
from bench.results import contended, load, rows_of, uncertain
from bench.runtimes import LABELS
from mnist_zoo.util import UserError

STORAGE = Path(".benchmarks")  # pytest-benchmark's default --benchmark-storage
MOVED = 0.10  # a change beyond 10% either way is coloured

# (title, row kind, the fields that identify a row, [(column, field, format, lower is better)])
Metric = tuple[str, str, Callable[[float | None], str], bool]
TABLES: list[tuple[str, str, tuple[str, ...], list[Metric]]] = [
    (
        "Inference: p50 latency of one call",
        "inference",
        ("model", "batch", "runtime", "threads", "device"),
        [("p50", "p50_s", fmt_time, True)],
    ),
    (
        "Deployment",
        "inference",
        ("model", "runtime"),
        [
            ("cold start", "cold_start_s", lambda s: "-" if s is None else f"{s:.2f} s", True),
            ("peak RSS", "peak_rss_mb", lambda m: "-" if m is None else f"{m:,.0f} MiB", True),
        ],
    ),
    ("Test accuracy", "accuracy", ("model", "runtime", "device"), [("accuracy", "accuracy", fmt_pct, False)]),
    ("Training", "epoch", ("model", "device"), [("images/s", "images_per_second", fmt_num, False)]),
]


def saved_runs(storage: Path = STORAGE) -> list[Path]:
    """This machine's autosaved runs in pytest-benchmark's storage, oldest first."""
    from pytest_benchmark.storage.file import FileStorage
    from pytest_benchmark.utils import get_machine_id

    if not Path(storage).is_dir():  # FileStorage would create it
        return []
    files = FileStorage(storage, logging.getLogger(__name__), get_machine_id())
    return files.query("[0-9][0-9][0-9][0-9]_")


def resolve(run: str, storage: Path = STORAGE) -> Path:
    """A path, or a saved run's number (0003) or name prefix, as `pytest-benchmark compare` takes them."""
    if Path(run).is_file():
        return Path(run)
    found = [p for p in saved_runs(storage) if p.name.startswith(run)]
    if len(found) != 1:
        what = "no saved run" if not found else f"{len(found)} saved runs"
        raise UserError(f"{what} matches {run!r} in {storage}/ (give a file, or a run number like 0003)")
    return found[0]


def pick(runs: list[str], storage: Path = STORAGE) -> tuple[Path, Path]:
    """(then, now): the two runs named, or one named and the newest saved, or the two newest saved."""
    if len(runs) == 2:
        return resolve(runs[0], storage), resolve(runs[1], storage)
    saved = saved_runs(storage)
    if len(saved) < 2 - len(runs):
        how = "pytest --benchmark-only --benchmark-autosave"
        raise UserError(
            f"{len(saved)} saved run(s) in {storage}/, {2 - len(runs)} needed; save runs with: {how}"
        )
    return (resolve(runs[0], storage), saved[-1]) if runs else (saved[-2], saved[-1])


def _change(then: dict, now: dict, field: str, lower_better: bool) -> str:
    a, b = then.get(field), now.get(field)
    if a is None or b is None:
        return "-"
    if field == "accuracy":
        return f"{(b - a) * 100:+.2f} pts"
    if not a or not b:
        return "-"
    better = a / b if lower_better else b / a
    text = f"{better:.2f}x"
    # Where the figure's contention was measured: the cold start apart from the row's timing; memory does not
    # depend on the load.
    measured = {
        "cold_start_s": [then.get("deployment") or {}, now.get("deployment") or {}],
        "peak_rss_mb": [],
    }
    shaky = [r for r in measured.get(field, [then, now]) if contended(r) or uncertain(r)]
    if shaky:
        return f"{text} {marks(*shaky)}"
    if better > 1 + MOVED:
        return f"[green]{text}[/]"
    return f"[red]{text}[/]" if better < 1 - MOVED else text


def _label(field: str, value) -> str:
    return LABELS.get(value, value) if field == "runtime" else str(value)


def tables(then: list[dict], now: list[dict]) -> list[Table]:
    out = []
    for title, kind, keys, metrics in TABLES:
        pairs: dict[tuple, list[dict]] = {}
        for side, rows in enumerate((then, now)):
            for r in rows:
                if r.get("kind") == kind and all(k in r for k in keys) and r.get(metrics[0][1]) is not None:
                    pairs.setdefault(tuple(r[k] for k in keys), [{}, {}])[side] = r
        if not pairs:
            continue
        t = Table(title=title, title_justify="left")
        for k in keys:
            t.add_column(k, justify="right" if k in ("batch", "threads") else "left")
        for label, *_ in metrics:
            for col in (f"{label} then", f"{label} now", "change"):
                t.add_column(col, justify="right")
        for key, (a, b) in pairs.items():
            cells = [_label(k, v) for k, v in zip(keys, key, strict=True)]
            for _, field, fmt, lower in metrics:
                cells += [
                    fmt(a.get(field)) if a else "-",
                    fmt(b.get(field)) if b else "-",
                    _change(a, b, field, lower),
                ]
            t.add_row(*cells)
        out.append(t)
    return out


def _describe(path: Path, doc: dict) -> str:
    commit = doc.get("commit_info") or {}
    at = (doc.get("datetime") or "?")[:19].replace("T", " ")
    dirty = " (uncommitted changes)" if commit.get("dirty") else ""
    return f"{path} ({at}, commit {str(commit.get('id') or '?')[:8]}{dirty})"


def compare(runs: list[str], storage: Path, console: Console) -> None:
    """Print the tables of two runs side by side (python -m bench compare)."""
    then_path, now_path = pick(runs, storage)
    then_doc, now_doc = load(then_path), load(now_path)
    console.print(
        f"[bold]then[/] {_describe(then_path, then_doc)}\n[bold]now[/]  {_describe(now_path, now_doc)}"
    )
    for table in tables(rows_of(then_doc), rows_of(now_doc)):
        table.caption = (
            "change: times better now (above 1: faster or smaller); accuracy: difference in points"
        )
        console.print(table)
