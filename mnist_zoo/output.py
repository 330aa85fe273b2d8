"""What the commands print and write besides their tables: one JSON object, the pictures, the files' paths,
and the cells of a summary (mean ± std, interval).

Results go to stdout (with --json: exactly one JSON object, printed by `printed_json`); progress bars, notes and
errors go to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mnist_zoo import plots
from mnist_zoo.util import out, write_json


def printed_json(record: dict, as_json: bool, path: Path | None = None) -> bool:
    """Write `record` to `path` (atomically) when given; if `as_json`, print it as the one stdout object.
    Returns `as_json`: the caller prints its tables only when this is False."""
    if path is not None:
        write_json(path, record)
    if as_json:
        print(json.dumps(record))  # not through rich: JSON must not be wrapped or highlighted
    return as_json


def draw(record: dict, draw: Callable[[], dict[str, Path]], skip: bool = False) -> None:
    """record["plots"] = draw() (name -> path) unless `skip` (--no-plots) or matplotlib is missing; then say why."""
    record["plots"] = {}
    if skip:
        record["plots_skipped"] = "--no-plots"
    elif not plots.available():
        record["plots_skipped"] = "matplotlib is not installed (pip install 'mnist-zoo[plots]')"
    else:
        record["plots"] = {name: str(path) for name, path in draw().items()}


def print_files(record: dict) -> None:
    """The pictures and the JSON record, one path a line."""
    if record.get("plots_skipped"):
        out.print(f"pictures skipped: {record['plots_skipped']}")
    files = {**record.get("plots", {}), **({"results": record["report"]} if "report" in record else {})}
    for name, path in files.items():
        out.print(f"  {name:<16} {path}", highlight=False)


def mean_std(s: dict) -> str:
    """A compare.summarize() as "99.27% ± 0.04%" (no ± for one value)."""
    return f"{s['mean']:.2%}" + (f" ± {s['std']:.2%}" if s["std"] is not None else "")


def interval(s: dict) -> str:
    """A compare.summarize()'s confidence interval as "99.21-99.33%"."""
    return "needs 2+ runs" if s["ci_low"] is None else f"{s['ci_low'] * 100:.2f}-{s['ci_high']:.2%}"
