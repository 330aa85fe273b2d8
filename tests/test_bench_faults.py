"""Benchmark files that are not what they claim, and `bench check`'s clean-up: every reader of a results or
baseline file (report, plot, compare, check) answers a wrong field type, a missing field, a huge or deeply
nested file with one line naming the file and the field, and exit code 1; `bench check` leaves no temporary
folder behind, on success, on an error and on SIGTERM.

    pytest tests/test_bench_faults.py
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from test_bench import deployed, doc_of, run_rows  # the rows of tests/test_bench.py (tests/ is on sys.path)

from bench import check, results
from bench.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def good_doc() -> dict:
    return doc_of(deployed(run_rows()))


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def baseline(tmp_path: Path) -> Path:
    """A baseline made from the good run (as --update-baseline makes one)."""
    fresh = check.metrics(results.rows_of(good_doc()))
    return write(tmp_path / "baseline.json", check.make_baseline(fresh, {"threads": [2]}))


def commands(path: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Every command that reads a results file, reading `path`."""
    good = write(tmp_path / "good.json", good_doc())
    return {
        "report": ["report", str(path)],
        "plot": ["plot", str(path), "--out", str(tmp_path / "pictures")],
        "compare": ["compare", str(good), str(path)],
        "check": ["check", "--results", str(path), "--baseline", str(baseline(tmp_path))],
    }


def one_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _set(i: int, field: str, value):
    def change(doc: dict) -> None:
        doc["benchmarks"][i]["extra_info"][field] = value

    return change


def _drop(i: int, field: str):
    def change(doc: dict) -> None:
        del doc["benchmarks"][i]["extra_info"][field]

    return change


# benchmarks[0] is lenet eager at batch 1 (inference), [3] its accuracy row, [6] the lenet epoch row
BROKEN = {
    "p50 a string": (
        _set(0, "p50_s", "0.3 ms"),
        "benchmarks[0].extra_info.p50_s must be number, got '0.3 ms'",
    ),
    "threads a float": (_set(0, "threads", 2.5), "benchmarks[0].extra_info.threads must be integer, got 2.5"),
    "batch a bool": (_set(0, "batch", True), "benchmarks[0].extra_info.batch must be integer, got True"),
    "model a dict": (_set(0, "model", {"name": "lenet"}), "benchmarks[0].extra_info.model must be string"),
    "p50 zero": (
        _set(0, "p50_s", 0),
        "benchmarks[0].extra_info.p50_s: 0 is less than or equal to the minimum",
    ),
    "p50 NaN": (_set(0, "p50_s", float("nan")), "benchmarks[0].extra_info.p50_s is NaN, not a finite number"),
    "accuracy infinite": (_set(3, "accuracy", float("inf")), "benchmarks[3].extra_info.accuracy is Infinity"),
    "interval of one": (_set(0, "p50_ci_s", [1.0]), "benchmarks[0].extra_info.p50_ci_s: [1.0] is too short"),
    "accuracy null": (
        _set(3, "accuracy", None),
        "benchmarks[3].extra_info.accuracy must be number, got None",
    ),
    "reached a string": (
        _set(7, "reached", "yes"),
        "benchmarks[7].extra_info.reached must be boolean or null",
    ),
    "p99 missing": (_drop(0, "p99_s"), "benchmarks[0].extra_info lacks p99_s"),
    "floor missing": (_drop(3, "floor"), "benchmarks[3].extra_info lacks floor"),
    "rows not a list": (lambda d: d.update(benchmarks={"a": 1}), "benchmarks must be array"),
    "a row not an object": (lambda d: d["benchmarks"].append([1, 2]), "benchmarks[9] must be object"),
    "commit_info a list": (lambda d: d.update(commit_info=[]), "commit_info must be object or null, got []"),
}


@pytest.mark.parametrize("command", ["report", "plot", "compare", "check"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_wrong_field_is_one_line_naming_file_and_field(command, case, tmp_path, capsys):
    if command == "plot":
        pytest.importorskip("matplotlib", reason="plot needs the plots extra")
    change, message = BROKEN[case]
    doc = good_doc()
    change(doc)
    path = write(tmp_path / "run.json", doc)
    assert main(commands(path, tmp_path)[command]) == 1
    one_line(capsys, f"error: {path}: {message}")


def test_the_good_file_passes_every_command(tmp_path, capsys):
    """The control: the file the broken ones are made from is read by every command (check: 0 or a verdict)."""
    path = write(tmp_path / "run.json", good_doc())
    argv = commands(path, tmp_path)
    for command in ("report", "compare", "check"):
        assert main(argv[command]) == 0, (command, capsys.readouterr())


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep, more than 64"),
        ('{"benchmarks": ' + "[" * 70 + "]" * 70 + "}", "nested 71 levels deep"),
        ("{not json", "not JSON (Expecting property name"),
        ("\xff\xfe", "not JSON"),
        ("[]", "the document must be object, got []"),
    ],
    ids=["deep", "deep-inside", "not-json", "not-utf8", "a-list"],
)
def test_deep_and_foreign_files_are_one_line(text, message, tmp_path, capsys):
    path = write(tmp_path / "run.json", text)
    assert main(["report", str(path)]) == 1
    one_line(capsys, f"error: {path}: {message}")


def test_a_huge_file_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    path = write(tmp_path / "run.json", good_doc())
    monkeypatch.setattr(results, "MAX_RESULTS_BYTES", 1000)
    assert main(["report", str(path)]) == 1
    one_line(capsys, f"error: {path}: larger than 1,000 bytes")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.update(format="other/1"), "format must be 'mnist-zoo/bench-baseline/1', got 'other/1'"),
        (lambda b: b.update(tolerance="5%"), "tolerance must be number, got '5%'"),
        (lambda b: b.update(tolerance=1.5), "tolerance: 1.5 is greater than or equal to the maximum of 1"),
        (lambda b: b["ratios"].update(x="fast"), "ratios.x must be number, got 'fast'"),
        (lambda b: b["ratios"].update(x=-float("inf")), "ratios.x is -Infinity, not a finite number"),
        (lambda b: b.update(required="accuracy/lenet/eager"), "required must be array"),
        (lambda b: b["machine"].update(threads=[]), "machine.threads: [] should be non-empty"),
    ],
)
def test_a_broken_baseline_is_one_line(change, message, tmp_path, capsys):
    path = baseline(tmp_path)
    doc = json.loads(path.read_text())
    change(doc)
    write(path, doc)
    run = write(tmp_path / "run.json", good_doc())
    assert main(["check", "--results", str(run), "--baseline", str(path)]) == 1
    one_line(capsys, f"error: {path}: {message}")


# --- bench check's temporary folders --------------------------------------------------------------------------


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """tempfile's folder for this test: what bench check leaves in it is what it left behind."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_check_leaves_no_temporary_folder(tmp_path, temp_root, capsys):
    run = write(tmp_path / "run.json", good_doc())
    assert main(["check", "--results", str(run), "--baseline", str(baseline(tmp_path))]) == 0
    broken = good_doc()
    broken["benchmarks"][0]["extra_info"]["p50_s"] = "x"
    assert main(["check", "--results", str(write(run, broken)), "--baseline", str(baseline(tmp_path))]) == 1
    assert not list(temp_root.iterdir())


def test_check_stopped_by_sigterm_leaves_no_temporary_folder_or_child(tmp_path):
    """A real quick run, stopped while its pytest child starts: exit 143, the folder gone, the child ended."""
    root = tmp_path / "tmp"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(root)}
    argv = [sys.executable, "-m", "bench", "check", "--pause", "0"]
    p = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    children: list[psutil.Process] = []
    while not children and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        with contextlib.suppress(psutil.Error):
            children = [c for c in psutil.Process(p.pid).children() if "pytest" in " ".join(c.cmdline())]
    assert children, "bench check started no pytest child"
    assert [d.name.startswith("mnist-zoo-check-") for d in root.iterdir()] == [True]  # the folder in use
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert (p.returncode, err.strip().splitlines()[-1]) == (143, "error: terminated"), err[-2000:]
    assert not [d for d in root.iterdir() if d.name.startswith("mnist-zoo-")]
    assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE
