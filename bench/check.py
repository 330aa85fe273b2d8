"""Regression check for CI: a fresh quick benchmark run compared with the committed baseline (bench/baseline.json).

    python -m bench check                      # quick run (about 3 minutes on 2 cores), compare, exit 1 on regression
    python -m bench check --results run.json   # compare a saved run instead (pytest ... --benchmark-json run.json)
    python -m bench check --update-baseline    # after an intended change: measure, then rewrite the baseline

It fails, with a table of what regressed, when
  - a test accuracy falls below its floor (mlp 92%, dnn 97.5%, lenet 99%; int8 0.5 points lower) or a model no
    longer reaches its target within its default recipe;
  - an export stops agreeing with PyTorch (share of identical predictions; fp32 logits within 1e-3);
  - a speed *ratio* falls more than the tolerance (default 40%) below the baseline: runtime vs eager at equal
    threads (of their fastest calls, which load disturbs least), zoo training vs the tutorial pipeline. Ratios,
    not absolute times: shared CI machines are noisy, and both sides of a ratio are measured in the same run.
    A ratio that fails is measured once more and the better of the two counts (best of 2);
  - a row the baseline expects is missing (its test errored or was skipped), or pytest reported a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench import results
from bench.machine import cores
from mnist_zoo.util import UserError, atomic_write

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path(__file__).with_name("baseline.json")
BASELINE_FORMAT = "mnist-zoo/bench-baseline/1"
DEFAULT_TOLERANCE = 0.4
# The training ratios set one process against the tutorial's five (main + 4 workers), so how busy the machine
# is moves them more than it moves the inference ratios (measured here: 1.9x to 5.1x for lenet at 1 thread).
TRAINING_TOLERANCE = 0.5
# The ratios a new baseline watches: every export vs eager at batch 1, ONNX Runtime fp32 for lenet at batch
# 1000 (its few, long calls make the other batch-1000 ratios too noisy to gate on), and the training ratios.
# (torch.compile is not in the quick run.)
CHECKED_RATIOS = (
    r"speedup/\w+/(torchscript|ort-fp32|ort-int8)/b1",
    r"speedup/lenet/ort-fp32/b1000",
    r"train-vs-tutorial/lenet",
    r"tutorial-accuracy-speedup/lenet",
)


@dataclass
class Metric:
    name: str
    kind: str  # "min": value must be >= limit; "max": value must be <= limit; "ratio": compared with the baseline
    value: float
    limit: float | None = None
    sources: tuple[str, ...] = ()  # the benchmarks (fullnames) it comes from, to measure it again


@dataclass
class Check:
    name: str
    measured: float | None
    limit: float | None
    baseline: float | None
    ok: bool
    note: str = ""


def metrics(rows: list[dict]) -> dict[str, Metric]:
    """The checkable figures of a run (CPU rows; inference at the run's largest thread count)."""
    rows = results.derive(rows)
    out: dict[str, Metric] = {}

    def add(m: Metric) -> None:
        if m.value is not None:
            out[m.name] = m

    cpu = [r for r in rows if r.get("device") == "cpu"]
    threads = max((r["threads"] for r in cpu if r.get("kind") == "inference"), default=None)
    by_key = {(r["kind"], r.get("model"), r.get("runtime"), r.get("batch"), r.get("threads")): r for r in cpu}
    tutorial = {r["model"]: r for r in cpu if r["kind"] == "tutorial"}
    for r in cpu:
        kind, model, src = r.get("kind"), r.get("model"), (r.get("fullname"),)
        if kind == "accuracy":
            rt = r["runtime"]
            add(Metric(f"accuracy/{model}/{rt}", "min", r["accuracy"], r["floor"], src))
            if rt != "eager":
                add(Metric(f"agreement/{model}/{rt}", "min", r["agreement"], r["agreement_floor"], src))
                if results.precision(rt) == "fp32":
                    add(
                        Metric(
                            f"logits/{model}/{rt}",
                            "max",
                            r["max_abs_logit_diff"],
                            results.LOGIT_ATOL["cpu"],
                            src,
                        )
                    )
        elif kind == "time-to-accuracy":
            add(Metric(f"reached/{model}", "min", 1.0 if r["reached"] else 0.0, 1.0, src))
            t = tutorial.get(model)
            if t:
                add(Metric(f"tutorial-accuracy-speedup/{model}", "ratio", r.get("tutorial_accuracy_speedup"),
                           sources=src + (t.get("fullname"),)))  # fmt: skip
        elif kind == "epoch" and model in tutorial:
            add(Metric(f"train-vs-tutorial/{model}", "ratio", r.get("vs_tutorial"),
                       sources=src + (tutorial[model].get("fullname"),)))  # fmt: skip
        elif kind == "inference" and r["runtime"] != "eager" and r["threads"] == threads:
            eager = by_key.get(("inference", model, "eager", r["batch"], threads))
            if eager:
                add(Metric(f"speedup/{model}/{r['runtime']}/b{r['batch']}", "ratio", r.get("speedup_vs_eager_best"),
                           sources=src + (eager.get("fullname"),)))  # fmt: skip
    return out


def compare(baseline: dict, fresh: dict[str, Metric], tolerance: float | None = None) -> list[Check]:
    """Every check of `fresh` against its floors and `baseline`'s ratios; missing expected figures fail."""
    tol = baseline.get("tolerance", DEFAULT_TOLERANCE) if tolerance is None else tolerance
    checks = []
    for name in sorted(set(baseline.get("required", [])) - set(fresh)):
        checks.append(Check(name, None, None, None, False, "missing: its benchmark errored or was skipped"))
    for name, m in sorted(fresh.items()):
        if m.kind == "min":
            checks.append(Check(name, m.value, m.limit, None, m.value >= m.limit))
        elif m.kind == "max":
            checks.append(Check(name, m.value, m.limit, None, m.value <= m.limit))
    for name, base in sorted(baseline.get("ratios", {}).items()):
        m = fresh.get(name)
        limit = base * (1 - (tol if tolerance is not None else baseline.get("tolerances", {}).get(name, tol)))
        if m is None:
            checks.append(
                Check(name, None, limit, base, False, "missing: its benchmark errored or was skipped")
            )
            continue
        note = "faster than the baseline: refresh it?" if m.value > base * (1 + tol) else ""
        checks.append(Check(name, m.value, limit, base, m.value >= limit, note))
    return checks


def make_baseline(fresh: dict[str, Metric], machine: dict, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    ratios = {n: round(m.value, 3) for n, m in sorted(fresh.items())
              if m.kind == "ratio" and any(re.fullmatch(p, n) for p in CHECKED_RATIOS)}  # fmt: skip
    return {
        "format": BASELINE_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "how": "python -m bench check --update-baseline (a quick run on a quiet machine); review the diff, commit",
        "machine": {
            k: machine.get(k) for k in ("cpu", "cores", "threads", "train_threads", "versions", "platform")
        },
        "tolerance": tolerance,
        "tolerances": {n: TRAINING_TOLERANCE for n in ratios if n.startswith(("train-", "tutorial-"))},
        "required": sorted(n for n, m in fresh.items() if m.kind in ("min", "max")),
        "ratios": ratios,
    }


def run_quick(
    json_path: Path, threads: int | None, train_threads: int | None, select: list[str] | None = None
) -> int:
    """Run the quick benchmarks (or only the `select`ed node ids) with pytest; returns its exit code."""
    cmd = [sys.executable, "-m", "pytest", *(select or ["bench"]), "--benchmark-only", "--bench-quick",
           "--bench-device", "cpu", f"--benchmark-json={json_path}", "-q", "-p", "no:cacheprovider"]  # fmt: skip
    if threads:
        cmd.append(f"--bench-threads={threads}")
    if train_threads:
        cmd.append(f"--bench-train-threads={train_threads}")
    shown = " ".join(cmd[1:]) if select is None else f"-m pytest ... ({len(select)} benchmarks again)"
    print(f"$ python {shown}", flush=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.call(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": path})


def best_of(first: dict[str, Metric], second: dict[str, Metric]) -> dict[str, Metric]:
    """Per ratio, the better of two measurements (noise only ever makes a ratio look worse or better at random;
    a real regression is worse both times)."""
    merged = dict(first)
    for name, m in second.items():
        if m.kind == "ratio" and name in merged and m.value > merged[name].value:
            merged[name] = m
    return merged


def checks_table(checks: list[Check], everything: bool = False):
    """Failures and the speed ratios; passing floors only with `everything` (they are summed up in a line)."""
    from rich.table import Table

    t = Table(title="mnist-zoo regression check", title_justify="left")
    for col in ("check", "measured", "limit", "baseline", "result", "note"):
        t.add_column(col, justify="right" if col in ("measured", "limit", "baseline") else "left")
    for c in sorted(checks, key=lambda c: (c.ok, c.name)):
        if c.ok and c.baseline is None and not everything:
            continue
        digits = 2 if c.baseline is not None else 4  # ratios: 2 decimals; accuracies and agreements: 4
        cells = ["-" if v is None else f"{v:.{digits}f}" for v in (c.measured, c.limit, c.baseline)]
        t.add_row(c.name, *cells, "[green]ok[/]" if c.ok else "[bold red]FAIL[/]", c.note)
    return t


def floors_line(checks: list[Check]) -> str:
    floors = [c for c in checks if c.baseline is None and c.measured is not None and c.limit is not None]
    passed = [c for c in floors if c.ok]
    line = f"floors (accuracy, agreement with PyTorch, logit difference, target reached): {len(passed)} of {len(floors)} ok"
    mins = [c for c in passed if c.name.startswith("accuracy/")]
    if mins:
        tight = min(mins, key=lambda c: c.measured - c.limit)
        line += f"; tightest {tight.name} {tight.measured:.2%} (floor {tight.limit:.2%})"
    return line


def tempfile_path(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix="mnist-zoo-check-")) / name


def load_baseline(path: Path) -> dict:
    import json

    try:
        baseline = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(
            f"no baseline at {path}; make one with: python -m bench check --update-baseline"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable baseline ({e})") from None
    if not isinstance(baseline, dict) or baseline.get("format") != BASELINE_FORMAT:
        raise UserError(f"{path} is not an mnist-zoo baseline (format {BASELINE_FORMAT!r} expected)")
    return baseline


def write_baseline(path: Path, baseline: dict) -> Path:
    import json

    text = json.dumps(baseline, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _measure(args, path: Path, select: list[str] | None = None) -> tuple[dict, int]:
    """(results document, pytest exit code) of a quick run, or of --results when given."""
    if args.results and select is None:
        return results.load(args.results), 0
    rc = run_quick(path, args.threads, args.train_threads, select)
    if not path.is_file():
        raise UserError(
            f"the quick benchmark run wrote no results (pytest exit code {rc}); see its output above"
        )
    return results.load(path), rc


def main(args) -> int:
    """python -m bench check (arguments parsed in bench/__main__.py)."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)  # CI logs: room for the check names
    baseline = None if args.update_baseline else load_baseline(args.baseline)
    if baseline:
        # Like for like: measure at the thread counts the baseline was measured at (capped at this machine's cores).
        base = baseline.get("machine") or {}
        if args.threads is None and base.get("threads"):
            args.threads = min(max(base["threads"]), cores())
        if args.train_threads is None and base.get("train_threads"):
            args.train_threads = min(base["train_threads"], cores())
    keep = Path(args.keep) if args.keep else tempfile_path("quick.json")
    doc, rc = _measure(args, keep)
    fresh = metrics(results.rows_of(doc))
    machine = results.machine_of(doc)
    if args.update_baseline:
        bad = [c.name for c in compare({}, fresh) if not c.ok]
        if rc != 0 or bad:
            raise UserError(f"this run has failures ({', '.join(bad) or f'pytest exit code {rc}'}); fix them before "
                            "refreshing the baseline")  # fmt: skip
        new = make_baseline(fresh, machine, args.tolerance or DEFAULT_TOLERANCE)
        write_baseline(args.baseline, new)
        console.print(f"wrote {args.baseline}: {len(new['ratios'])} ratios, {len(new['required'])} floors; "
                      "review `git diff` and commit it")  # fmt: skip
        return 0
    checks = compare(baseline, fresh, args.tolerance)
    for _ in range(max(args.attempts, 1) - 1 if not args.results else 0):
        retry = [c for c in checks if not c.ok and c.baseline is not None and c.measured is not None]
        if not retry:
            break
        sources = sorted({s for c in retry for s in fresh[c.name].sources if s})
        console.print(
            f"{len(retry)} ratio(s) under the limit: measuring them again (the best measurement counts)"
        )
        again, rc_again = _measure(args, keep.with_name("again.json"), sources)
        fresh = best_of(fresh, metrics(results.rows_of(again)))
        checks = compare(baseline, fresh, args.tolerance)
        rc = rc or rc_again
    console.print(checks_table(checks, args.all))
    console.print(floors_line(checks))
    base = baseline.get("machine") or {}
    for key in ("threads", "train_threads"):
        if base.get(key) and base.get(key) != machine.get(key):
            console.print(f"[yellow]note:[/] the baseline's {key} were {base[key]}, this run's {machine.get(key)}; "
                          "ratios may differ for that reason alone")  # fmt: skip
    failed = [c for c in checks if not c.ok]
    if failed or rc != 0:
        what = f"{len(failed)} of {len(checks)} checks failed" if failed else "all checks passed"
        tail = f"; pytest exit code {rc} (a benchmark failed: see its output above)" if rc != 0 else ""
        print(f"error: {what}{tail}", file=sys.stderr)
        return 1
    console.print(f"[green]ok[/]: {len(checks)} checks passed (tolerance on ratios "
                  f"{args.tolerance if args.tolerance is not None else baseline.get('tolerance', DEFAULT_TOLERANCE):.0%})")  # fmt: skip
    return 0
