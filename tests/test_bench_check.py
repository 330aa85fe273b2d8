"""`python -m bench check --against REF` (bench/against.py) with a stand-in probe: the interleaving, the verdicts
and exit codes, the worktree's removal whatever happens; the probe's injected slowdown; the tables at 100
columns. The real probe runs in `python -m bench check --against` itself (docs/regression-check.md).

pytest tests/test_bench_check.py
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_bench import (  # the rows of tests/test_bench.py (tests/ is on sys.path)
    doc_of,
    inference,
    row,
    run_rows,
)

from bench import against, probe, stats
from bench.__main__ import main as bench_main
from bench.conftest import DEFAULT_COLUMNS, OUR_COLUMNS, narrow_columns
from bench.results import derive
from mnist_zoo.util import UserError

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"latency/lenet/ort-fp32/b1": ("s", 25e-6), "training/lenet": ("images/s", 6000.0)}


def worktrees() -> str:
    return subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout


@pytest.fixture
def fake_probe(monkeypatch):
    """Replace the probe's processes: each gives every figure's slices with 1% noise, head slowed by
    `slowdown`; the processes are recorded in order (side, injected slowdown, first or second of its pair)."""
    calls: list[tuple[str, float, str]] = []
    setting = {"slowdown": 0.0, "noise": 0.01, "fail_at": None, "pinned": []}
    rng = np.random.default_rng(0)

    def one(tree, options, order):
        calls.append((tree.side, float(options[options.index("--inject") + 1]), order))
        if setting["fail_at"] == len(calls):
            raise KeyboardInterrupt
        slower = 1 + (setting["slowdown"] if tree.side == "head" else 0.0)
        figures = {}
        for name, (unit, value) in FIGURES.items():
            noisy = value * rng.lognormal(0, setting["noise"], 9)
            slices = noisy * slower if unit == "s" else noisy / slower
            figures[name] = {"value": float(np.median(slices)), "unit": unit, "slices": list(slices)}
        return {"figures": figures, "threads": 1, "allocator": "glibc, fixed thresholds"}

    def probe_(pairs):
        setting["pinned"].append([cpus for _, cpus in pairs])
        found = [
            [one(t, o, order) for (t, o), order in zip(sides, ("first", "second"), strict=True)]
            for sides, _ in pairs
        ]
        return found, 0.02

    monkeypatch.setattr(against, "probe", probe_)
    monkeypatch.setattr(against, "build", lambda trees: None)
    return calls, setting


def test_against_interleaves_and_flags_a_slowdown(fake_probe, tmp_path, capsys):
    calls, setting = fake_probe
    setting["slowdown"] = 0.20
    verdict = tmp_path / "verdict.md"
    code = bench_main(["check", "--against", "HEAD", "--speed-only", "--markdown", str(verdict)])
    assert code == 1
    # each pair takes turns, base first, then head first: which side goes first flips from pair to pair
    assert [(side, order) for side, _, order in calls[:4]] == [
        ("base", "first"),
        ("head", "second"),
        ("head", "first"),
        ("base", "second"),
    ]
    assert len(calls) % 2 == 0
    out, err = capsys.readouterr()
    assert err.startswith("error: regressed: latency/lenet/ort-fp32/b1 0.83") and err.count("\n") == 1
    assert "training/lenet" in err and "REGRESSED" in out
    text = verdict.read_text()
    assert text.startswith("### mnist-zoo benchmark check: regressed")
    assert "the probes' allocator: glibc, fixed thresholds;" in text  # the measuring conditions, recorded
    row = next(line for line in text.splitlines() if line.startswith("| latency/lenet/ort-fp32/b1 |"))
    assert row.endswith("| REGRESSED |") and re.search(
        r"\| 2\d\.\d µs \| (29|30)\.\d µs \| 0\.8\d\d \|", row
    ), row
    assert "mnist-zoo-against-" not in worktrees()  # the temporary worktree is gone


def test_pairs_take_turns_one_per_cpu(fake_probe, monkeypatch):
    _, setting = fake_probe
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert bench_main(["check", "--against", "HEAD", "--speed-only"]) == 0
    # three CPUs: three pairs a round, each on its own CPU; 6 pairs decide every figure
    assert setting["pinned"] == [[[0], [1], [2]]] * 2
    setting["pinned"].clear()
    assert bench_main(["check", "--against", "HEAD", "--speed-only", "--threads", "2"]) == 0
    assert setting["pinned"] == [[[0, 1]]] * against.MIN_PAIRS  # CPUs 0 and 1: one pair of 2 threads
    setting["pinned"].clear()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # fewer CPUs than threads: not pinned
    assert bench_main(["check", "--against", "HEAD", "--speed-only", "--threads", "2"]) == 0
    assert setting["pinned"] == [[None]] * against.MIN_PAIRS


def test_against_itself_passes_and_stops_early(fake_probe, capsys):
    calls, _ = fake_probe
    assert bench_main(["check", "--against", "HEAD", "--speed-only"]) == 0
    assert len(calls) == 2 * against.MIN_PAIRS  # every figure decided at the first look
    assert "ok: no watched figure slower than 5%" in capsys.readouterr().out


def test_a_noisy_machine_is_undecided_not_a_regression(fake_probe, capsys):
    _, setting = fake_probe
    setting["noise"] = 0.2  # +-20% from one process to the next: no interval narrows enough
    assert bench_main(["check", "--against", "HEAD", "--speed-only", "--max-pairs", "7"]) == 75
    err = capsys.readouterr().err
    assert err.startswith("error: machine busy: 2 figure(s) undecided after 7 pairs") and err.count("\n") == 1


def test_injected_slowdown_goes_to_one_side(fake_probe):
    calls, _ = fake_probe
    bench_main(
        ["check", "--against", "HEAD", "--speed-only", "--inject-slowdown", "0.1", "--inject-into", "base"]
    )
    assert {s for side, s, _ in calls if side == "base"} == {0.1}
    assert {s for side, s, _ in calls if side == "head"} == {0.0}


def test_an_interrupted_check_removes_its_worktree(fake_probe, capsys):
    _, setting = fake_probe
    setting["fail_at"] = 3
    assert bench_main(["check", "--against", "HEAD", "--speed-only"]) == 130
    assert "mnist-zoo-against-" not in worktrees()
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_an_unknown_ref_is_one_line(capsys):
    assert bench_main(["check", "--against", "no-such-branch-xyz", "--speed-only"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown git ref 'no-such-branch-xyz'") and err.count("\n") == 1
    assert bench_main(["check", "--against", "HEAD", "--threshold", "1.5"]) == 1
    assert "--threshold" in capsys.readouterr().err


def test_check_help_shows_against(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_main(["check", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "python -m bench check --against main" in text and "--markdown FILE" in text


def test_changes_name_missing_and_new_figures():
    base, head = against.Tree("base", ROOT, "base"), against.Tree("head", ROOT, "head")
    ok, failed = {"value": 1.0, "slices": [1.0] * 3}, {"error": "boom"}
    for i in range(6):
        base.record({"a": ok, "b": ok}, i)
        head.record({"a": ok, "b": failed, "c": ok}, i)
    found = {c.name: c for c in against.changes(base, head, 0.05)}
    assert found["a"].verdict == stats.OK and found["a"].ci == (1.0, 1.0)
    assert found["b"].verdict == "missing" and "boom" in found["b"].note
    assert found["c"].verdict == "new"
    assert [c.name for c in against.failed(list(found.values()))] == ["b"]


def test_turns_alternate_and_end_with_the_partner():
    import threading

    to_a, to_b, log = os.pipe(), os.pipe(), []
    a, b = probe.Turns((to_a[0], to_b[1]), first=True), probe.Turns((to_b[0], to_a[1]), first=False)

    def side(turns, name, times):
        turns.begin()
        for i in range(times):
            turns.wait()
            log.append(f"{name}{i}")
            turns.done()

    other = threading.Thread(target=side, args=(b, "b", 2))
    other.start()
    side(a, "a", 2)
    other.join()
    assert log == ["a0", "b0", "a1", "b1"]  # the second hands over first: it is set up
    os.close(to_a[1])  # the partner has ended (its ends closed): no more waiting, no error
    os.close(to_b[0])
    side(a, "a", 3)
    assert log[-3:] == ["a0", "a1", "a2"]


def test_a_build_that_runs_over_its_time_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr(against, "PROBE_TIMEOUT_S", 0.01)
    tree = against.Tree("base", ROOT, "base", artifacts=tmp_path)
    with pytest.raises(UserError, match=r"building the exports of base \(base\) ran over 0.01 s"):
        against.build([tree])


def test_a_real_pair_takes_turns(tmp_path):
    """Two real probes of this tree, taking turns on one figure that needs no export: each reports its slices."""
    (tmp_path / "build.json").write_text(json.dumps({"models": [], "failed": {}}))
    tree = against.Tree("head", ROOT, "head", artifacts=tmp_path)
    options = ["--threads", "1", "--inject", "0.0", "--only", "latency/mlp/eager/b1"]
    (found,), _ = against.probe([([(tree, options), (tree, options)], None)])
    for result in found:
        figure = result["figures"]["latency/mlp/eager/b1"]
        assert len(figure["slices"]) == probe.PASSES and min(figure["slices"]) > 0 and figure["value"] > 0
        # the allocator's thresholds are fixed wherever the C library is glibc (probe.steady_allocator)
        glibc = platform.libc_ver()[0] == "glibc"
        assert result["allocator"] == ("glibc, fixed thresholds" if glibc else "as the C library sets it")


@pytest.mark.parametrize("seconds", [2e-4, 5e-6])  # a cnn call, and one as short as mlp's in ORT
def test_probe_injection_lengthens_each_call_by_its_fraction(seconds):
    def work():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    ratios = []
    for _ in range(300):  # a few calls each way, back to back: the CPU's slow and fast states hit both alike
        plain, slowed = [], []
        probe._calls(work, 0.0, 0.0, plain)
        probe._calls(work, 0.0, 0.10, slowed)
        ratios.append(np.median(slowed) / np.median(plain))
    assert np.median(ratios) == pytest.approx(1.10, abs=0.02)


def test_pytest_benchmark_columns_are_narrowed_on_4x_and_5x():
    assert narrow_columns(None) == OUR_COLUMNS  # 5.x: the option's default is None
    assert narrow_columns(list(DEFAULT_COLUMNS)) == OUR_COLUMNS  # 4.x: the full list
    assert narrow_columns(["min", "max"]) == ["min", "max"]  # asked for: kept


def test_inference_rows_at_100_columns_piped(tmp_path):
    """A real quick row through pytest, piped at COLUMNS=100: intervals in the JSON and the table, no cell cut,
    the installed pytest-benchmark's table narrowed, a progress line."""
    results = tmp_path / "run.json"
    cmd = [sys.executable, "-m", "pytest", "bench/test_inference.py", "-k", "lenet and ort-fp32 and b1-"]
    cmd += ["--benchmark-only", "--bench-quick", "--bench-threads", "1", "--bench-device", "cpu"]
    cmd += [f"--benchmark-json={results}", "-p", "no:cacheprovider"]
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    text = done.stdout
    assert "…" not in text
    assert re.search(r"^Name \(time in \w+\)\s+Median\s+IQR\s+OPS( \(\w+/s\))?\s+Rounds\s*$", text, re.M), (
        text
    )
    assert re.search(r"^\[bench\] inference lenet done; 1 of 1 benchmarks in \d+ s$", text, re.M), text
    summary = text.split("mnist-zoo benchmark summary")[1]
    assert max(len(line) for line in summary.splitlines()) <= 100
    row = json.loads(results.read_text())["benchmarks"][0]["extra_info"]
    low, high = row["p50_ci_s"]
    assert low <= row["p50_s"] <= high and row["stopped"] in ("precise", "time cap")
    assert row["speedup_paired_ci"][0] <= row["speedup_paired"] <= row["speedup_paired_ci"][1]
    ort = next(line for line in summary.split("Inference: lenet")[1].splitlines() if "ORT fp32" in line)
    assert re.search(r"\d+ µs ±\d+(\.\d)?%", ort) and re.search(r"\d\.\d\dx ±\d+(\.\d)?%", ort), ort


def test_progress_estimates_a_file_not_yet_started_from_its_typical_cost():
    from types import SimpleNamespace

    from bench.progress import TYPICAL_S, Progress

    p, lines = Progress(), []
    p.reporter = SimpleNamespace(write_line=lines.append)
    p.files = {"t0": "test_training.py", "t1": "test_training.py"} | {
        f"i{k}": "test_inference.py" for k in range(10)
    }
    p.spent = dict.fromkeys(["t0", "t1"], 2 * TYPICAL_S["test_training.py"])  # this machine: half the pace
    p.left = {"inference lenet": {f"i{k}" for k in range(10)}}
    p.say("training lenet")
    left = 10 * 2 * TYPICAL_S["test_inference.py"]  # not 10 training rows' worth
    assert lines == [f"[bench] training lenet done; 2 of 12 benchmarks in 0 s, about {left:.0f} s left"]


def test_threads_png_only_from_a_sweep(tmp_path):
    pytest.importorskip("matplotlib")
    from test_bench import (
        run_rows,
    )  # tests/ is on sys.path: pytest's rootdir-relative imports

    from bench import plot

    results = tmp_path / "run.json"
    results.write_text(json.dumps(doc_of(run_rows())))  # every row at 2 threads
    notes: list[str] = []
    written = plot.plot_run(results, tmp_path / "out", notes)
    assert [p.name for p in written] == ["latency.png"]
    assert notes[0].startswith("threads.png not drawn: every row ran at 2 thread(s); a sweep draws it")
    results.write_text(json.dumps(doc_of([*run_rows(), inference("lenet", "eager", 1, 3e-4, threads=1)])))
    assert "threads.png" in [p.name for p in plot.plot_run(results, tmp_path / "out", [])]


def test_peer_ratio_only_for_lenet():

    peer = row("peer", "bench/test_training.py::test_peer_recipe", model="peer", threads=2, contention=0.01)
    peer.update(train_seconds=20.0, images_per_second=3000.0, accuracy=0.99)
    mlp = row("time-to-accuracy", "bench/test_training.py::test_time_to_accuracy[mlp-cpu]", model="mlp")
    mlp.update(target=0.92, reached=True, seconds_to_target=2.0, contention=0.01)
    rows = derive([*run_rows(), peer, mlp])
    assert mlp.get("vs_peer") is None
    assert (
        next(r for r in rows if r["kind"] == "time-to-accuracy" and r["model"] == "lenet")["vs_peer"] == 1.25
    )


def test_the_baseline_check_says_its_ratios_are_coarse(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc_of(run_rows())))
    baseline = str(tmp_path / "baseline.json")
    assert bench_main(["check", "--results", str(good), "--baseline", baseline, "--update-baseline"]) == 0
    capsys.readouterr()
    assert bench_main(["check", "--results", str(good), "--baseline", baseline]) == 0
    out = capsys.readouterr().out
    assert "measured on another machine" in out and "--against main" in out


def test_sigterm_ends_a_real_check_and_removes_its_worktree():
    """A real `python -m bench check --against HEAD`, terminated while it builds the exports: exit 130, one
    line, no worktree or temporary folder left behind, no probe process left running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bench", "check", "--against", "HEAD", "--speed-only"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("building the exports of base"), first
        time.sleep(1.0)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and err.strip() == "error: interrupted"
    assert "mnist-zoo-against-" not in worktrees()
    left = subprocess.run(["pgrep", "-f", f"{ROOT}/bench/probe.py build"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_calibration_replays_checks_from_measured_pairs(tmp_path, capsys):
    from bench import calibrate

    rng = np.random.default_rng(0)
    pairs = 12
    changes = {name: list(rng.lognormal(0, 0.01, pairs)) for name in FIGURES}
    run = {"slowdown": 0.0, "verdicts": {}, "pairs": pairs, "seconds": 1.0, "contention": [0, 0]}
    run["changes_by_pair"] = changes
    # as a real run can leave them: a figure only head has (no change), a pair that failed on one side
    failed = json.loads(json.dumps({**run, "changes_by_pair": {**changes, "latency/new/b1": [None] * pairs}}))
    failed["changes_by_pair"]["training/lenet"][3] = None
    saved = tmp_path / "calibration.json"
    calibrate.save(saved, [run, failed])  # the file as a calibration writes it
    assert calibrate.main(["--replay", str(saved), "--aa", "50", "--slowdowns", "0.2:50"]) == 0
    table = capsys.readouterr().out
    assert "| none (A/A) | 50 | 0 | 0/100 |" in table  # 1% noise: no false alarm
    assert "| 20% | 50 | 50 | 100/100 |" in table  # and every 20% slowdown found


def test_each_pairs_change_is_the_median_of_its_slice_ratios():
    base, head = against.Tree("base", ROOT, "base"), against.Tree("head", ROOT, "head")
    base.record({"f": {"value": 2.0, "slices": [2.0, 2.0, 4.0]}}, 0)
    head.record({"f": {"value": 2.2, "slices": [2.2, 1.8, 4.4]}}, 0)
    base.record({"f": {"error": "boom"}}, 1)
    head.record({"f": {"value": 2.0, "slices": [2.0]}}, 1)
    # base time / head time slice by slice, their median; None where a side failed
    assert against.pair_changes(base, head, "f") == [pytest.approx(2 / 2.2), None]


RUN = {"slowdown": 0.0, "pairs": 6, "changes_by_pair": {"training/lenet": [1.0] * 6}}


@pytest.mark.parametrize(
    "text, says",
    [
        (None, "No such file"),
        ("{not json", "not JSON"),
        ('{"runs": [{"slowdown": 0.0, "pairs": NaN}]}', "runs[0].pairs is NaN, not a finite number"),
        ("[]", "the document must be object"),
        ('{"table": []}', "lacks runs"),
        (json.dumps({"runs": [{**RUN, "pairs": "6"}]}), "runs[0].pairs must be integer"),
        (json.dumps({"runs": [{**RUN, "pairs": 1e12}]}), "runs[0].pairs must be integer"),
        (
            json.dumps({"runs": [{**RUN, "changes_by_pair": {"f": ["x"]}}]}),
            "runs[0].changes_by_pair.f[0] must",
        ),
        (json.dumps({"runs": [{**RUN, "changes_by_pair": {"f": [-1.0]}}]}), "runs[0].changes_by_pair.f[0]"),
        (json.dumps({"runs": [{"slowdown": 0.0, "pairs": 6}]}), "lacks changes_by_pair"),
        (json.dumps({"runs": [RUN]}) + " " * (16 << 20), "larger than"),
        (
            json.dumps({"runs": [{**RUN, "pairs": 10**12, "changes_by_pair": {"f": [1.0] * 2}}]}),
            "holds 2 A/A",
        ),
        (json.dumps({"runs": [{**RUN, "slowdown": 0.1}]}), "holds 0 A/A pairs"),
    ],
)
def test_calibration_replay_refuses_a_bad_file_in_one_line(tmp_path, capsys, text, says):
    from bench import calibrate

    path = tmp_path / "calibration.json"
    if text is not None:
        path.write_text(text)
    assert calibrate.main(["--replay", str(path), "--aa", "1", "--slowdowns"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}"), err
    assert says in err, err
