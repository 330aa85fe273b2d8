"""Regression check for CI: this tree against a git ref on the same machine, or against the committed baseline.

    python -m bench check --against main      # both trees measured here, interleaved (bench/against.py);
                                              # exit 1 when a watched figure's whole 95% interval of
                                              # head/base lies below 1 - 5%, or a floor fails
    python -m bench check                     # quick run (about 3 min on 2 cores) against bench/baseline.json
    python -m bench check --results run.json  # compare a saved run (pytest ... --benchmark-json=run.json)
    python -m bench check --update-baseline   # after an intended change: measure, rewrite the baseline

With --against, the speed figures come from bench/against.py (its docstring says how) and the floors below from
a quick run of head's accuracy benchmarks. Without it, the baseline's ratios were measured on another machine,
and ratios differ between CPUs by tens of percent: the tolerances are wide and only large regressions show.

Exit 1, with a table of what regressed, when
  - a test accuracy falls below its floor, or a model no longer reaches its target within its default recipe;
  - an export stops agreeing with PyTorch (share of identical predictions; fp32: largest logit difference);
  - a speed *ratio* falls more than the tolerance below the baseline: runtime vs eager at equal threads, zoo
    training vs the tutorial pipeline. Ratios, not absolute times, and each measured interleaved (A B A B),
    so that a machine whose speed drifts moves both sides alike. A ratio that fails is measured once more and
    the better of the two counts (noise makes a ratio worse or better at random; a regression, every time);
  - a row the baseline expects is missing (its test errored or was skipped), or pytest reported a failure.
Exit 75 (EX_TEMPFAIL), "machine busy", when a ratio could only be measured contended: other processes used
more than CONTENDED of the CPUs' time while it ran, even after a pause to let them finish and a second
measurement. A contended ratio is neither a pass nor a regression, so it is not judged; the floors still are
(exit 1 wins). Run it again on a quiet machine. The floors and tolerances are in mnist_zoo/targets.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from bench import against, stats
from bench.report import make_console
from bench.results import derive, load, machine_of, rows_of
from bench.runtimes import EXTRA_RUNTIMES
from mnist_zoo import cpu
from mnist_zoo.schema import read_json
from mnist_zoo.targets import (
    BENCH_LOGIT_ATOL,
    CHECK_TOLERANCE,
    CHECK_TRAINING_TOLERANCE,
    CONTENDED,
    precision,
)
from mnist_zoo.util import UserError, atomic_write, atomic_write_bytes, fail, out

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path(__file__).with_name("baseline.json")
BASELINE_FORMAT = "mnist-zoo/bench-baseline/1"
# The ratios a new baseline watches: every export vs eager at batch 1, ONNX Runtime fp32 for lenet at batch
# 1000 (its few, long calls make the other batch-1000 ratios too noisy to gate on), and the training ratios.
# (torch.compile is not in the quick run; OpenVINO, an optional extra, is not watched.)
WATCHED_RATIOS = re.compile(
    r"speedup/\w+/(torchscript|ort-fp32|ort-int8)/b1"
    r"|speedup/lenet/ort-fp32/b1000"
    r"|(train-vs-tutorial|tutorial-accuracy-speedup)/lenet"
)
_FRACTION = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
BASELINE_SCHEMA = {
    "type": "object",
    "required": ["format"],
    "properties": {
        "format": {"const": BASELINE_FORMAT},
        "machine": {
            "type": "object",
            "properties": {
                "threads": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
                "train_threads": {"type": ["integer", "null"], "minimum": 1},
            },
        },
        "tolerance": _FRACTION,
        "tolerances": {"type": "object", "additionalProperties": _FRACTION},
        "required": {"type": "array", "items": {"type": "string"}},
        "ratios": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}
MISSING = "missing: its benchmark errored or was skipped"
EXIT_BUSY = 75  # sysexits.h EX_TEMPFAIL: try again later
PAUSE_S = 60  # the longest a contended check waits for the machine to quieten before measuring again
# The quick run that judges the floors with --against: models trained to their targets, every runtime's accuracy.
FLOOR_TESTS = ["bench/test_training.py::test_time_to_accuracy", "bench/test_accuracy.py"]
COARSE = (
    "note: the baseline was measured on another machine, and speed ratios differ between CPUs by tens of "
    "percent, so its tolerances are wide and only large regressions show; "
    "`python -m bench check --against main` compares with a git ref on this machine"
)


@dataclass
class Metric:
    name: str
    kind: str  # "min": value >= limit; "max": value <= limit; "ratio": compared with the baseline
    value: float
    limit: float | None = None
    sources: tuple[str, ...] = ()  # the benchmarks (fullnames) it comes from, to measure it again
    contention: float = 0.0  # the most of its source rows': other processes' share of the CPUs meanwhile

    @property
    def contended(self) -> bool:
        return self.kind == "ratio" and self.contention > CONTENDED


@dataclass
class Check:
    name: str
    measured: float | None
    limit: float | None
    baseline: float | None
    ok: bool
    note: str = ""
    busy: bool = False  # a contended ratio: not judged


def metrics(rows: list[dict]) -> dict[str, Metric]:
    """The checkable figures of a run (CPU rows; inference at the run's largest thread count)."""
    found: dict[str, Metric] = {}

    def add(name: str, kind: str, value: float | None, limit: float | None, *of: dict) -> None:
        if value is not None:  # `of`: the rows it comes from, whose benchmarks run again to measure it again
            busy = max((r.get("contention") or 0.0) for r in of)
            found[name] = Metric(name, kind, value, limit, tuple(r.get("fullname") for r in of), busy)

    on_cpu = [r for r in derive(rows) if r.get("device") == "cpu"]
    threads = max((r["threads"] for r in on_cpu if r.get("kind") == "inference"), default=None)
    tutorial = {r["model"]: r for r in on_cpu if r["kind"] == "tutorial"}
    for r in on_cpu:
        kind, model, rt = r.get("kind"), r.get("model"), r.get("runtime")
        if kind == "accuracy":
            add(f"accuracy/{model}/{rt}", "min", r["accuracy"], r["floor"], r)
            if rt != "eager":
                add(f"agreement/{model}/{rt}", "min", r["agreement"], r["agreement_floor"], r)
            if rt != "eager" and precision(rt) == "fp32":
                add(f"logits/{model}/{rt}", "max", r["max_abs_logit_diff"], BENCH_LOGIT_ATOL["cpu"], r)
        elif kind == "time-to-accuracy":
            add(f"reached/{model}", "min", 1.0 if r["reached"] else 0.0, 1.0, r)
            if model in tutorial:
                speedup = r.get("tutorial_accuracy_speedup")
                add(f"tutorial-accuracy-speedup/{model}", "ratio", speedup, None, r, tutorial[model])
        elif kind == "epoch" and model in tutorial:
            add(f"train-vs-tutorial/{model}", "ratio", r.get("vs_tutorial"), None, r, tutorial[model])
        elif kind == "inference" and rt != "eager" and r["threads"] == threads:
            # measured interleaved with eager at the same threads, inside this one row
            add(f"speedup/{model}/{rt}/b{r['batch']}", "ratio", r.get("speedup_paired"), None, r)
    return found


def compare(baseline: dict, fresh: dict[str, Metric], tolerance: float | None = None) -> list[Check]:
    """Every check of `fresh` against its floors and `baseline`'s ratios; missing expected figures fail."""
    tol = baseline.get("tolerance", CHECK_TOLERANCE) if tolerance is None else tolerance
    required = sorted(set(baseline.get("required", [])) - set(fresh))
    checks = [Check(name, None, None, None, False, MISSING) for name in required]
    for name, m in sorted(fresh.items()):
        if m.kind in ("min", "max"):
            ok = m.value >= m.limit if m.kind == "min" else m.value <= m.limit
            checks.append(Check(name, m.value, m.limit, None, ok))
    for name, base in sorted(baseline.get("ratios", {}).items()):
        m = fresh.get(name)
        # --tolerance applies to every ratio; without it, each has the baseline's (training ratios: looser)
        own = baseline.get("tolerances", {}).get(name, tol) if tolerance is None else tolerance
        limit = base * (1 - own)
        if m is None:
            checks.append(Check(name, None, limit, base, False, MISSING))
        elif m.contended:
            note = f"contended: {m.contention:.0%} of the CPUs busy with other processes; not judged"
            checks.append(Check(name, m.value, limit, base, False, note, busy=True))
        else:
            note = "faster than the baseline: refresh it?" if m.value > base * (1 + tol) else ""
            checks.append(Check(name, m.value, limit, base, m.value >= limit, note))
    return checks


def make_baseline(fresh: dict[str, Metric], machine: dict, tolerance: float = CHECK_TOLERANCE) -> dict:
    ratios = {n: round(m.value, 3) for n, m in sorted(fresh.items()) if WATCHED_RATIOS.fullmatch(n)}
    return {
        "format": BASELINE_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "how": (
            "python -m bench check --update-baseline (a quick run on a quiet machine); review the diff, commit"
        ),
        "machine": {
            k: machine.get(k) for k in ("cpu", "cores", "threads", "train_threads", "versions", "platform")
        },
        "tolerance": tolerance,
        "tolerances": {n: CHECK_TRAINING_TOLERANCE for n in ratios if n.startswith(("train-", "tutorial-"))},
        # Floors every install measures: not those of runtimes of an optional extra (OpenVINO), which CI's
        # install has not got and would report as missing.
        "required": sorted(
            n for n, m in fresh.items() if m.kind in ("min", "max") and n.split("/")[-1] not in EXTRA_RUNTIMES
        ),
        "ratios": ratios,
    }


def load_baseline(path: Path) -> dict:
    """The baseline file, checked against BASELINE_SCHEMA: a one-line UserError naming the file and field."""
    if not Path(path).is_file():
        raise UserError(f"no baseline at {path}; make one with: python -m bench check --update-baseline")
    return read_json(path, BASELINE_SCHEMA)


def run_quick(
    json_path: Path, threads: int | None, train_threads: int | None, select: list[str] | None = None
) -> int:
    """Run the quick benchmarks (or only the `select`ed node ids) with pytest; returns its exit code."""
    quick = ["--benchmark-only", "--bench-quick", "--bench-device", "cpu", f"--benchmark-json={json_path}"]
    cmd = [sys.executable, "-m", "pytest", *(select or ["bench"]), *quick, "-q", "-p", "no:cacheprovider"]
    if threads:
        cmd.append(f"--bench-threads={threads}")
    if train_threads:
        cmd.append(f"--bench-train-threads={train_threads}")
    shown = " ".join(cmd[1:]) if select is None else f"-m pytest {' '.join(select)} ..."
    out.out(f"$ python {shown}", highlight=False)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.call(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": path})


def run_or_load(args: argparse.Namespace, path: Path, select: list[str] | None = None) -> tuple[dict, int]:
    """(results document, pytest exit code) of a quick run, or of --results when given."""
    if args.results and select is None:
        return load(args.results), 0
    rc = run_quick(path, args.threads, args.train_threads, select)
    if not path.is_file():
        what = f"the quick benchmark run wrote no results (pytest exit code {rc})"
        raise UserError(f"{what}; see its output above")
    return load(path), rc


def best_of(earlier: dict[str, Metric], again: dict[str, Metric]) -> dict[str, Metric]:
    """Per ratio, the better of two measurements: an uncontended one over a contended one, else the higher."""
    merged = dict(earlier)
    for name, m in again.items():
        old = merged.get(name)
        if m.kind == "ratio" and old and (m.contended, -m.value) < (old.contended, -old.value):
            merged[name] = m
    return merged


def measure_again(
    args: argparse.Namespace, fresh: dict[str, Metric], names: list[str], path: Path
) -> tuple[dict[str, Metric], int]:
    """Run the benchmarks behind the metrics `names` once more: (best_of the two measurements, exit code)."""
    again, rc = run_or_load(args, path, sorted({s for name in names for s in fresh[name].sources if s}))
    return best_of(fresh, metrics(rows_of(again))), rc


def wait_for_quiet(seconds: float) -> cpu.Contention:
    """Watch the machine until other processes leave it (or `seconds` pass); returns the last look."""
    deadline = time.monotonic() + seconds
    while True:
        busy = cpu.sample(2.0)
        if not busy.contended or time.monotonic() > deadline:
            return busy
        out.print(
            f"machine busy: other processes use {busy.share:.0%} of the CPUs' time; waiting", highlight=False
        )


def tables() -> Console:
    """Where the tables go: stdout, 100 columns wide when it is not a terminal (a CI log, a pipe)."""
    return make_console(sys.stdout)


def checks_table(checks: list[Check], everything: bool = False) -> Table:
    """Failures and the speed ratios; passing floors only with `everything` (they are summed up in a line).
    Notes follow the table, a line each, so that it reads at 80 columns."""
    t = Table(title="mnist-zoo regression check", title_justify="left")
    for col in ("check", "measured", "limit", "baseline", "result"):
        t.add_column(col, justify="right" if col in ("measured", "limit", "baseline") else "left")
    for c in sorted(checks, key=lambda c: (c.ok, c.name)):
        if c.ok and c.baseline is None and not everything:
            continue
        digits = 2 if c.baseline is not None else 4  # ratios: 2 decimals; accuracies and agreements: 4
        cells = ["-" if v is None else f"{v:.{digits}f}" for v in (c.measured, c.limit, c.baseline)]
        result = "[yellow]busy[/]" if c.busy else "[green]ok[/]" if c.ok else "[bold red]FAIL[/]"
        t.add_row(c.name, *cells, result)
    return t


def floors_line(checks: list[Check]) -> str:
    floors = [c for c in checks if c.baseline is None and c.measured is not None and c.limit is not None]
    passed = [c for c in floors if c.ok]
    what = "floors (accuracy, agreement with PyTorch, logit difference, target reached)"
    line = f"{what}: {len(passed)} of {len(floors)} ok"
    accuracies = [c for c in passed if c.name.startswith("accuracy/")]
    if accuracies:
        tight = min(accuracies, key=lambda c: c.measured - c.limit)
        line += f"; tightest {tight.name} {tight.measured:.2%} (floor {tight.limit:.2%})"
    return line


def main(args: argparse.Namespace) -> int:
    """python -m bench check (arguments parsed in bench/__main__.py)."""
    if args.against:
        return main_against(args)
    # The quick runs' files go to a temporary folder, removed on every way out: an error, Ctrl-C and SIGTERM
    # (mnist_zoo.launch raises it as a KeyboardInterrupt) included.
    with tempfile.TemporaryDirectory(prefix="mnist-zoo-check-") as tmp:
        return main_baseline(args, Path(tmp))


def main_baseline(args: argparse.Namespace, tmp: Path) -> int:
    """python -m bench check without --against: a quick run (its files in `tmp`) against the baseline."""
    baseline = None if args.update_baseline else load_baseline(args.baseline)
    if baseline:
        # Like for like: measure at the baseline's thread counts (capped at this machine's CPUs).
        base, most = baseline.get("machine") or {}, len(cpu.affinity())
        if args.threads is None and base.get("threads"):
            args.threads = min(max(base["threads"]), most)
        if args.train_threads is None and base.get("train_threads"):
            args.train_threads = min(base["train_threads"], most)
    doc, rc = run_or_load(args, Path(args.keep) if args.keep else tmp / "quick.json")
    fresh = metrics(rows_of(doc))
    if not args.results:
        fresh, rc = measure_busy_and_failing(args, baseline, fresh, rc, tmp / "again.json")
    if args.update_baseline:
        bad = [c.name for c in compare({}, fresh) if not c.ok] + [n for n, m in fresh.items() if m.contended]
        if rc != 0 or bad:
            failures = ", ".join(bad) or f"pytest exit code {rc}"
            raise UserError(f"this run has failures or contended ratios ({failures}); not a baseline")
        new = make_baseline(fresh, machine_of(doc), args.tolerance or CHECK_TOLERANCE)
        atomic_write(args.baseline, lambda tmp: tmp.write_text(json.dumps(new, indent=2) + "\n"))
        ratios, floors = len(new["ratios"]), len(new["required"])
        out.print(
            f"wrote {args.baseline}: {ratios} ratios, {floors} floors; review `git diff`, commit",
            soft_wrap=True,
        )
        return 0
    checks = compare(baseline, fresh, args.tolerance)
    tables().print(checks_table(checks, args.all))
    for c in sorted((c for c in checks if c.note), key=lambda c: c.name):
        out.print(f"  {c.name}: {c.note}", highlight=False, soft_wrap=True)
    out.print(floors_line(checks), soft_wrap=True)
    base, machine = baseline.get("machine") or {}, machine_of(doc)
    for key in ("threads", "train_threads"):
        if base.get(key) and base.get(key) != machine.get(key):
            ours = f"the baseline's {key} were {base[key]}, this run's {machine.get(key)}"
            out.print(f"[yellow]note:[/] {ours}; ratios may differ for that reason alone")
    out.print(COARSE, highlight=False, soft_wrap=True)
    failed, busy = [c for c in checks if not c.ok and not c.busy], [c for c in checks if c.busy]
    if failed or rc != 0:
        what = f"{len(failed)} of {len(checks)} checks failed" if failed else "no check failed"
        tail = f"; pytest exit code {rc} (a benchmark failed: see its output above)" if rc != 0 else ""
        return fail(what + tail)
    if busy:
        share = max(fresh[c.name].contention for c in busy)
        why = f"{len(busy)} ratio(s) measured while other processes used up to {share:.0%} of the CPUs' time"
        return fail(
            f"machine busy: {why}; not a regression, not a pass: run the check on a quiet machine", EXIT_BUSY
        )
    tolerance = baseline.get("tolerance", CHECK_TOLERANCE) if args.tolerance is None else args.tolerance
    out.print(f"[green]ok[/]: {len(checks)} checks passed (tolerance on ratios {tolerance:.0%})")
    return 0


def floors(args: argparse.Namespace) -> tuple[list[Check], int]:
    """The floors (accuracy, agreement, logit difference, target reached) from a quick run of head's accuracy
    benchmarks, and pytest's exit code; a floor the committed baseline requires and the run lacks fails."""
    with tempfile.TemporaryDirectory(prefix="mnist-zoo-floors-") as tmp:  # removed on every way out
        path = Path(tmp) / "floors.json"
        rc = run_quick(path, None, None, FLOOR_TESTS)
        if not path.is_file():
            raise UserError(
                f"the floors' quick run wrote no results (pytest exit code {rc}); see its output above"
            )
        fresh = {n: m for n, m in metrics(rows_of(load(path))).items() if m.kind in ("min", "max")}
    try:
        required = load_baseline(args.baseline).get("required", [])
    except UserError:
        required = []
    return compare({"required": required}, fresh), rc


def changes_table(result: list[against.Change], how: dict) -> Table:
    title = f"head against base: the change of each speed (head/base; below 1, head is slower), {how['pairs']} pairs"
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, caption_justify="left")
    for col in ("figure", "base", "head", "change", "95% interval", "verdict"):
        t.add_column(col, justify="left" if col in ("figure", "verdict") else "right")
    colour = {
        stats.REGRESSED: "bold red",
        "missing": "bold red",
        stats.UNDECIDED: "yellow",
        stats.SLOWER: "yellow",
    }
    for c in result:
        word = against.VERDICT_WORDS[c.verdict]
        word = f"[{colour[c.verdict]}]{word}[/]" if c.verdict in colour else word
        change = "-" if c.change is None else f"{c.change:.3f}"
        cells = (
            against.fmt_value(c.base, c.unit),
            against.fmt_value(c.head, c.unit),
            change,
            against.fmt_ci(c.ci),
        )
        t.add_row(c.name, *cells, word)
    share = how.get("contention")
    busy = (
        f"other processes used {share[0]:.0%}-{share[1]:.0%} of the CPUs"
        if share
        else "contention not measured"
    )
    t.caption = (
        f"regressed: the whole interval below {1 - how['threshold']:.2f}; undecided: it holds both 1 and that. "
        f"{how['threads']} thread(s); {how['seconds']:.0f} s of rounds; {busy}; the probes' allocator: "
        f"{'; '.join(how.get('allocator') or ['not recorded'])}."
    )
    return t


def main_against(args: argparse.Namespace) -> int:
    """python -m bench check --against REF: the speed figures of both trees, then head's floors."""
    if not 0 < args.threshold < 1:
        raise UserError(f"--threshold is a fraction in (0, 1), got {args.threshold}")
    if args.inject_slowdown < 0:
        raise UserError(f"--inject-slowdown must be 0 or more, got {args.inject_slowdown}")
    for option in ("update_baseline", "results"):
        if getattr(args, option):
            raise UserError(f"--{option.replace('_', '-')} does not go with --against")
    start = time.monotonic()
    args.threads = args.threads or 1
    result, how, base, head = against.run(args)
    checks, rc = ([], 0) if args.speed_only else floors(args)
    tables().print(changes_table(result, how))
    for c in result:
        if c.note:
            out.print(f"  {c.name}: {c.note}", highlight=False, soft_wrap=True)
    failing_floors = [c for c in checks if not c.ok]
    if checks:
        out.print(floors_line(checks), soft_wrap=True)
        if failing_floors:
            tables().print(checks_table(failing_floors))
    regressed, undecided = against.failed(result), [c for c in result if c.verdict == stats.UNDECIDED]
    if regressed or failing_floors or rc != 0:
        names = [f"{c.name} {c.change:.3f} ({against.fmt_ci(c.ci)})" if c.ci else c.name for c in regressed]
        names += [c.name for c in failing_floors]
        verdict = "regressed: " + ", ".join(names) if names else f"pytest exit code {rc}"
        code = 1
    elif undecided:
        verdict = f"machine busy: {len(undecided)} figure(s) undecided after {how['pairs']} pairs"
        code = EXIT_BUSY
    else:
        verdict = f"ok: no watched figure slower than {args.threshold:.0%} beyond its interval"
        code = 0
    floors_text = floors_line(checks) if checks else "floors not judged (--speed-only)"
    if args.markdown:
        text = against.markdown(result, how, base, head, floors_text, verdict)
        atomic_write_bytes(args.markdown, text.encode())
    elapsed = f"(whole check {time.monotonic() - start:.0f} s)"
    if code == 0:
        out.print(f"[green]{verdict}[/] {elapsed}")
        return 0
    if code == EXIT_BUSY:
        return fail(
            f"{verdict}: not a regression, not a pass; more rounds or a quieter machine {elapsed}", code
        )
    return fail(f"{verdict} {elapsed}")


def measure_busy_and_failing(
    args: argparse.Namespace, baseline: dict | None, fresh: dict[str, Metric], rc: int, again: Path
) -> tuple[dict[str, Metric], int]:
    """Measure again what the first run could not settle: the contended ratios, after a pause for the machine
    to quieten, and the ratios under their limit (best of 2: noise makes a ratio worse or better at random, a
    regression makes it worse every time). Only the benchmarks behind them run again."""
    busy = [n for n, m in fresh.items() if m.contended]
    if busy:
        out.print(
            f"{len(busy)} ratio(s) measured contended: pausing up to {args.pause:.0f} s, then measuring again"
        )
        wait_for_quiet(args.pause)
    failing = [c.name for c in compare(baseline or {}, fresh) if not c.ok and not c.busy and c.baseline]
    if failing:
        out.print(f"{len(failing)} ratio(s) under the limit: measuring them again (the better counts)")
    if busy or failing:
        fresh, rc_again = measure_again(args, fresh, busy + failing, again)
        rc = rc or rc_again
    return fresh, rc
