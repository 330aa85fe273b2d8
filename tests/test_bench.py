"""Unit tests of the benchmark harness's logic (percentiles, ratios, report, regression check); no timings.

pytest tests/test_bench.py
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import check, coldstart, report, results, runtimes, timing
from bench.__main__ import main as bench_main
from mnist_zoo import cpu
from mnist_zoo.models import get_model
from mnist_zoo.targets import (
    BENCH_AGREEMENT_FLOOR,
    CHECK_TRAINING_TOLERANCE,
    CONTENDED,
    TARGET_PEER_RATIO,
    TUTORIAL_IMAGES,
    accuracy_floor,
    precision,
)
from mnist_zoo.util import UserError


def row(kind, fullname, **fields):
    return {"format": results.FORMAT, "kind": kind, "device": "cpu", "fullname": fullname, **fields}


def inference(model, runtime, batch, p50, threads=2, iqr=0.02, paired=None, contention=0.01, ci=0.01):
    fullname = f"bench/test_inference.py::test_latency[{model}-{runtime}-b{batch}-cpu-{threads}t]"
    percentiles = {"p50_s": p50, "min_s": p50 * 0.9, "p90_s": p50 * 1.1, "p99_s": p50 * 1.5}
    percentiles["p50_ci_s"] = [p50 * (1 - ci), p50 * (1 + ci)]
    return row(
        "inference",
        fullname,
        model=model,
        runtime=runtime,
        batch=batch,
        threads=threads,
        **percentiles,
        iqr_over_median=iqr,
        images_per_second=batch / p50,
        macs=497_000,
        cores=2,
        contention=contention,
        **({"speedup_paired": paired} if paired else {}),
    )


def accuracy(model, runtime, acc, agreement=1.0, diff=1e-6):
    return row(
        "accuracy",
        f"bench/test_accuracy.py::test_accuracy[{model}-{runtime}-cpu]",
        model=model,
        runtime=runtime,
        threads=2,
        accuracy=acc,
        floor=accuracy_floor(model, runtime),
        agreement=agreement,
        agreement_floor=BENCH_AGREEMENT_FLOOR[precision(runtime)],
        max_abs_logit_diff=diff,
    )


def training(tutorial_ips=1000.0, zoo_ips=8000.0, to_984=10.0, reached=True, contention=0.01):
    lenet = {"model": "lenet", "threads": 2}
    epoch = row("epoch", "bench/test_training.py::test_epoch[lenet-cpu]", **lenet, images_per_second=zoo_ips)
    epoch["epoch_seconds"] = 60_000 / zoo_ips
    tta = row("time-to-accuracy", "bench/test_training.py::test_time_to_accuracy[lenet-cpu]", **lenet)
    tta.update(target=0.99, reached=reached, seconds_to_target=25.0, seconds_to_tutorial_accuracy=to_984)
    tta.update(curve=[[to_984, 0.985], [25.0, 0.99]], images_to_tutorial_accuracy=to_984 * zoo_ips)
    tutorial = row("tutorial", "bench/test_training.py::test_tutorial_pipeline[lenet]", **lenet)
    tutorial.update(
        images_per_second=tutorial_ips, five_epochs_seconds_derived=TUTORIAL_IMAGES / tutorial_ips
    )
    tutorial["vs_tutorial_paired"] = zoo_ips / tutorial_ips
    for r in (epoch, tta, tutorial):
        r["contention"] = contention
    return [epoch, tta, tutorial]


def run_rows(speedup=7.0, lenet_acc=0.991, int8_agreement=0.998, contention=0.01, **train):
    return [
        inference("lenet", "eager", 1, 350e-6, contention=contention),
        inference("lenet", "ort-fp32", 1, 350e-6 / speedup, paired=speedup, contention=contention),
        inference("lenet", "ort-int8", 1, 100e-6, iqr=0.3, paired=3.5, contention=contention, ci=0.18),
        accuracy("lenet", "eager", lenet_acc),
        accuracy("lenet", "ort-fp32", lenet_acc),
        accuracy("lenet", "ort-int8", lenet_acc - 0.001, agreement=int8_agreement),
        *training(contention=contention, **train),
    ]


def doc_of(rows, quick=True):
    ours = {"cpu": "Test CPU", "cores": 2, "cpus_available": 2.0, "threads": [2], "quick": quick}
    ours.update(versions={"torch": "x"}, busy_at_start=0.01)
    benchmarks = [{"fullname": r["fullname"], "extra_info": r} for r in rows]
    return {"machine_info": {"mnist_zoo": ours}, "benchmarks": benchmarks}


def test_percentiles_of_raw_samples():
    stats = timing.percentile_stats([float(i) for i in range(1, 102)], batch=10)  # 1..101 s
    assert (stats["p50_s"], stats["p90_s"], stats["p99_s"]) == (51.0, 91.0, 100.0)
    assert stats["images_per_second"] == pytest.approx(10 / 51)
    assert stats["iqr_over_median"] == pytest.approx(50 / 51)
    assert stats["rounds"] == 101
    with pytest.raises(ValueError):
        timing.percentile_stats([], batch=1)


def test_rounds_fit_the_budget_within_bounds():
    assert timing.rounds_for(0.001, 1.0) == 1000
    assert timing.rounds_for(1.0, 1.0) == timing.MIN_ROUNDS
    assert timing.rounds_for(1e-9, 1.0) == timing.MAX_ROUNDS


def test_derive_fills_ratios_of_the_same_run():
    rows = results.derive(run_rows(speedup=7.0, tutorial_ips=1000.0, zoo_ips=8000.0, to_984=10.0))
    by = {(r["kind"], r.get("runtime")): r for r in rows}
    assert by["inference", "ort-fp32"]["speedup_vs_eager"] == pytest.approx(7.0)
    assert by["inference", "eager"]["speedup_vs_eager"] == pytest.approx(1.0)
    assert by["epoch", None]["vs_tutorial"] == pytest.approx(8.0)
    # 300,000 images for the tutorial's 5 epochs, 80,000 for the zoo to 98.4%, at a paired speed ratio of 8
    assert by["time-to-accuracy", None]["tutorial_accuracy_speedup"] == pytest.approx(300_000 / 80_000 * 8)


def test_paired_rounds_give_the_training_ratio():
    rows = run_rows(tutorial_ips=1000.0, zoo_ips=8000.0)
    next(r for r in rows if r["kind"] == "tutorial")["vs_tutorial_paired"] = 6.5
    epoch = next(r for r in results.derive(rows) if r["kind"] == "epoch")
    assert epoch["vs_tutorial"] == pytest.approx(6.5)  # not 8000 / 1000: those rows were timed apart


def test_speedup_is_against_eager_at_its_fastest_thread_count():
    one, two = (
        inference("lenet", "eager", 1, 2e-4, threads=1),
        inference("lenet", "eager", 1, 3e-4, threads=2),
    )
    rows = results.derive([one, two, inference("lenet", "ort-fp32", 1, 5e-5, threads=2)])
    assert rows[2]["speedup_vs_eager"] == pytest.approx(4.0) and rows[2]["eager_threads"] == 1


def test_targets_report_met_and_missed():
    found = {t["name"]: t for t in results.targets(results.derive(run_rows(speedup=3.0, zoo_ips=8000.0)))}
    assert found["lenet training images/s vs tutorial pipeline"]["met"] is True
    b1 = found["lenet batch 1, fastest runtime at 2 thread(s) vs eager"]
    assert b1["met"] is False and b1["note"].startswith("ort-int8")  # int8 (3.5x) beats fp32 (3x), under 5x


def test_lenet_to_99_is_set_against_the_peer_recipe():
    peer = row("peer", "bench/test_training.py::test_peer_recipe", model="peer", threads=2, contention=0.01)
    peer.update(train_seconds=20.0, images_per_second=3000.0, accuracy=0.9898)
    rows = results.derive([*run_rows(), peer])  # lenet reaches 99% after 25 s of training
    assert next(r for r in rows if r["kind"] == "time-to-accuracy")["vs_peer"] == pytest.approx(1.25)
    goal = next(t for t in results.targets(rows) if "peer" in t["name"])
    assert goal["met"] is False and goal["target"] == TARGET_PEER_RATIO
    out = io.StringIO()
    report.render(doc_of(rows), out, width=250)
    training = out.getvalue().split("Training")[1].split("Targets")[0]
    assert "1.25x" in training and "peer recipe" in training and "98.98% in 1 epoch" in training
    peer["contention"] = 0.5  # a contended peer row: the ratio is not a measurement
    assert next(t for t in results.targets(results.derive(rows)) if "peer" in t["name"])["met"] is None
    out = io.StringIO()
    report.render(doc_of(rows), out, width=250)
    speed, to_accuracy = out.getvalue().split("Training speed")[1].split("Time to accuracy")
    lenet = next(re.split(r"\s{2,}", line.strip()) for line in to_accuracy.splitlines() if "  lenet" in line)
    assert lenet[3] == "1.25x" and lenet[-1] == "!50%"  # the ratio's other side was contended
    assert "!" not in next(
        line for line in speed.splitlines() if line.startswith("  lenet")
    )  # lenet's is quiet


def test_no_target_is_met_from_a_contended_row():
    rows = results.derive(run_rows(speedup=7.0, zoo_ips=8000.0, contention=0.6))
    found = results.targets(rows)
    assert found and all(t["met"] is None and "contended" in t["note"] for t in found)
    out = io.StringIO()
    report.render(doc_of(rows), out, width=200)
    assert "!60%" in out.getvalue() and "not judged" in out.getvalue()
    assert "not judged: contended (60% of the CPUs busy" in out.getvalue()
    assert "yes" not in out.getvalue().split("Targets")[1].split("Inference")[0]


def test_a_ratio_against_a_contended_row_is_marked_even_on_a_quiet_row():
    # eager (the reference) measured while other processes took 70% of the CPUs; ORT quiet, at 1 and 2 threads
    rows = [inference("lenet", "eager", 1, 8e-4, threads=t, contention=0.7) for t in (1, 2)]
    rows += [inference("lenet", "ort-fp32", 1, 1e-4, threads=1, contention=0.7)]
    rows += [inference("lenet", "ort-fp32", 1, 0.9e-4, threads=2, contention=0.01)]
    out = io.StringIO()
    report.render(doc_of(results.derive(rows)), out, width=250)
    text = out.getvalue()
    cells = [re.split(r"\s{2,}", line.strip()) for line in text.split("Inference")[1].splitlines()]
    quiet = next(c for c in cells if len(c) >= 7 and c[1].endswith("ORT fp32") and c[2] == "2")
    assert quiet[6] == "8.89x ±2.0% @1!" and len(quiet) == 7  # its own row is quiet, its reference is not
    threads = text.split("Threads")[1].split("Inference")[0]
    lines = [re.split(r"\s{2,}", line.strip()) for line in threads.splitlines()]
    header, lenet = next(c for c in lines if c[0] == "model"), next(c for c in lines if c[0] == "lenet b1")
    assert lenet[header.index("ORT fp32")] == "2 1.11x !"  # 2 threads quiet, over 1 thread contended


def test_a_collapsed_eager_reference_is_said_in_words_not_a_win():
    # eager at 2 threads 45x slower than at 1 (a collapsed thread team); ORT at 2 threads looks 40x faster
    rows = [inference("lenet", "eager", 1, 2e-4, threads=1), inference("lenet", "eager", 1, 9e-3, threads=2)]
    rows += [inference("lenet", "ort-fp32", 1, 1e-4, threads=1), inference("lenet", "ort-fp32", 1, 2.25e-4)]
    rows = results.derive(rows)
    assert rows[3]["speedup_vs_eager"] == pytest.approx(2e-4 / 2.25e-4)  # vs eager at 1 thread, not 40x
    assert "collapsed" in (results.collapsed(rows, "lenet", "cpu", 1) or "")
    out = io.StringIO()
    report.render(doc_of(rows), out, width=200)
    assert "PyTorch eager collapsed: lenet batch 1 at 2 threads ran 45x slower than at 1" in out.getvalue()


def test_load_rejects_foreign_files_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not JSON"):
        results.load(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmarks": [{"extra_info": {}}]}))
    with pytest.raises(UserError, match="no mnist-zoo benchmark rows"):
        results.load(other)
    with pytest.raises(UserError, match="no such file"):
        results.load(tmp_path / "missing.json")


def test_report_renders_every_table(tmp_path):
    out = io.StringIO()
    report.render(doc_of(run_rows()), out, width=200)
    text = out.getvalue()
    for title in ("Test accuracy", "Training", "Targets", "Inference: lenet on cpu"):
        assert title in text
    assert "★ ORT fp32" in text  # the fastest runtime of its batch is starred
    int8 = next(line for line in text.split("Inference")[1].splitlines() if "ORT int8" in line)
    assert "100 µs ±18%" in int8 and int8.rstrip().endswith("?")  # its p50's interval: wider than ±5%
    assert "derived" in text  # the tutorial's 5-epoch time says how it was obtained


def test_check_passes_a_run_like_its_baseline():
    fresh = check.metrics(run_rows())
    baseline = check.make_baseline(fresh, {"threads": [2]})
    ratios = {"speedup/lenet/ort-fp32/b1", "speedup/lenet/ort-int8/b1", "train-vs-tutorial/lenet"}
    assert set(baseline["ratios"]) == ratios | {"tutorial-accuracy-speedup/lenet"}
    assert "accuracy/lenet/ort-int8" in baseline["required"]
    assert all(c.ok for c in check.compare(baseline, fresh))


@pytest.mark.parametrize(
    "change, failing",
    [
        ({"speedup": 3.0}, "speedup/lenet/ort-fp32/b1"),  # 7x -> 3x: beyond a 40% tolerance
        ({"zoo_ips": 3000.0}, "train-vs-tutorial/lenet"),
        ({"lenet_acc": 0.985}, "accuracy/lenet/eager"),
        ({"int8_agreement": 0.95}, "agreement/lenet/ort-int8"),
        ({"reached": False}, "reached/lenet"),
    ],
)
def test_check_fails_what_regressed(change, failing):
    baseline = check.make_baseline(check.metrics(run_rows()), {})
    checks = check.compare(baseline, check.metrics(run_rows(**change)))
    assert failing in {c.name for c in checks if not c.ok}


def test_check_tolerates_noise_and_fails_missing_rows():
    baseline = check.make_baseline(check.metrics(run_rows(speedup=7.0)), {})
    assert all(c.ok for c in check.compare(baseline, check.metrics(run_rows(speedup=5.0))))  # -29%: noise
    rows = [r for r in run_rows() if r.get("runtime") != "ort-int8"]
    failed = {c.name: c for c in check.compare(baseline, check.metrics(rows)) if not c.ok}
    assert "speedup/lenet/ort-int8/b1" in failed and "accuracy/lenet/ort-int8" in failed
    assert "missing" in failed["accuracy/lenet/ort-int8"].note


def test_best_of_two_keeps_the_better_ratio():
    first, second = check.metrics(run_rows(speedup=3.0)), check.metrics(run_rows(speedup=6.5))
    assert check.best_of(first, second)["speedup/lenet/ort-fp32/b1"].value == pytest.approx(6.5)
    assert check.best_of(second, first)["speedup/lenet/ort-fp32/b1"].value == pytest.approx(6.5)
    # measured interleaved with eager inside its own row: that row alone runs again
    assert first["speedup/lenet/ort-fp32/b1"].sources == (
        "bench/test_inference.py::test_latency[lenet-ort-fp32-b1-cpu-2t]",
    )
    busy = check.metrics(run_rows(speedup=9.0, contention=0.5))
    assert check.best_of(busy, first)["speedup/lenet/ort-fp32/b1"].value == pytest.approx(3.0)  # quiet wins


def test_a_contended_ratio_is_neither_a_pass_nor_a_regression(tmp_path, capsys):
    baseline = check.make_baseline(check.metrics(run_rows()), {})
    for speedup in (2.0, 7.0, 30.0):  # worse, equal, better: none of it is judged when contended
        checks = {
            c.name: c for c in check.compare(baseline, check.metrics(run_rows(speedup, contention=0.5)))
        }
        c = checks["speedup/lenet/ort-fp32/b1"]
        assert c.busy and not c.ok and "contended" in c.note
        assert checks["accuracy/lenet/eager"].ok  # floors are still judged
    good, busy = tmp_path / "good.json", tmp_path / "busy.json"
    good.write_text(json.dumps(doc_of(run_rows())))
    busy.write_text(json.dumps(doc_of(run_rows(contention=0.5))))
    path = str(tmp_path / "baseline.json")
    assert bench_main(["check", "--results", str(good), "--baseline", path, "--update-baseline"]) == 0
    assert bench_main(["check", "--results", str(busy), "--baseline", path]) == check.EXIT_BUSY == 75
    err = capsys.readouterr().err
    assert err.startswith("error: machine busy:") and "not a regression" in err and err.count("\n") == 1
    busy.write_text(json.dumps(doc_of(run_rows(contention=0.5, lenet_acc=0.95))))
    assert bench_main(["check", "--results", str(busy), "--baseline", path]) == 1  # a real failure wins
    assert bench_main(["check", "--results", str(busy), "--baseline", path, "--update-baseline"]) == 1


def test_cli_check_on_saved_results(tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(doc_of(run_rows())))
    bad.write_text(json.dumps(doc_of(run_rows(speedup=2.0))))
    baseline = tmp_path / "baseline.json"
    assert (
        bench_main(["check", "--results", str(good), "--baseline", str(baseline), "--update-baseline"]) == 0
    )
    assert json.loads(baseline.read_text())["format"] == check.BASELINE_FORMAT
    assert bench_main(["check", "--results", str(good), "--baseline", str(baseline)]) == 0
    assert bench_main(["check", "--results", str(bad), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr()
    assert "FAIL" in out.out and "speedup/lenet/ort-fp32/b1" in out.out
    assert out.err.strip().startswith("error: 1 of")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert bench_main(["report", str(tmp_path / "nope.json")]) == 1
    assert bench_main(["check", "--baseline", str(tmp_path / "nope.json")]) == 1
    assert bench_main(["check", "--results", "x.json", "--tolerance", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "update-baseline" in err[1]
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--help"])
    assert exit_.value.code == 0
    assert "python -m bench check" in capsys.readouterr().out


def test_update_refuses_a_failing_run(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc_of(run_rows(lenet_acc=0.95))))
    baseline = tmp_path / "baseline.json"
    assert bench_main(["check", "--results", str(bad), "--baseline", str(baseline), "--update-baseline"]) == 1
    assert not baseline.exists()
    assert "accuracy/lenet/eager" in capsys.readouterr().err


class FakeBenchmark:
    """What timing.measure uses of pytest-benchmark's fixture: pedantic() and stats.stats.data."""

    def __init__(self):
        self.calls = {}
        self.stats = type("S", (), {"stats": type("T", (), {"data": []})()})()

    def pedantic(self, fn, rounds, iterations, setup=None):
        self.calls = {"rounds": rounds, "iterations": iterations}
        for _ in range(rounds):
            if setup:
                setup()
            t0 = time.perf_counter()
            fn()
            self.stats.stats.data.append(time.perf_counter() - t0)


def test_measure_times_single_calls_after_warm_up():
    bench = FakeBenchmark()
    stats = timing.measure(bench, lambda: time.sleep(0.001), batch=4, cap_s=0.05, min_rounds=10)
    assert bench.calls == {"rounds": 1, "iterations": 1}  # one loop, whose single calls become the samples
    assert stats["rounds"] == len(bench.stats.stats.data) >= 10
    assert 0.001 <= stats["min_s"] <= stats["p50_s"] <= stats["p90_s"] <= stats["p99_s"]
    assert stats["images_per_second"] == pytest.approx(4 / stats["p50_s"])
    assert 0 <= stats["contention"] <= 1 and stats["cpus_available"] >= 1
    low, high = stats["p50_ci_s"]
    assert stats["segments"] >= timing.MIN_SEGMENTS and low <= stats["p50_s"] <= high
    assert stats["stopped"] in ("precise", "time cap") and stats["block"] % 2 == 1


def test_the_fastest_calls_still_get_an_interval():
    # a call of about a microsecond: MAX_ROUNDS calls come long before the cap, in enough segments for an
    # interval (segments sized by time alone made one segment of 20,000 calls, and no interval)
    stats = timing.measure(FakeBenchmark(), lambda: None, batch=1, cap_s=10.0, target=0.0)
    assert stats["stopped"] == "max rounds" and stats["segments"] >= 2 * timing.MIN_SEGMENTS
    assert stats["p50_ci_s"] is not None and stats["rounds"] <= timing.MAX_ROUNDS + stats["block"]


def test_measure_stops_when_precise_or_at_its_cap():
    calls = iter(range(10**9))
    steady = timing.measure(FakeBenchmark(), lambda: time.sleep(0.0005), batch=1, cap_s=5.0, target=0.5)
    assert steady["stopped"] == "precise" and steady["segments"] == timing.MIN_SEGMENTS  # ±50%: at once
    # every other segment twice as slow: the interval over segment medians stays wide, the cap stops it
    wild = timing.measure(
        FakeBenchmark(), lambda: time.sleep(0.0005 * (1 + (next(calls) // 51) % 2)), batch=1, cap_s=0.3
    )
    assert wild["stopped"] == "time cap" and wild["p50_ci_s"][1] / wild["p50_ci_s"][0] > 1.5


def test_interleaved_measure_gives_the_paired_speedup():
    bench, calls = FakeBenchmark(), {"fn": 0, "reference": 0}

    def call(side: str, seconds: float) -> None:
        calls[side] += 1
        time.sleep(seconds)

    stats = timing.measure(
        bench, lambda: call("fn", 0.001), batch=1, cap_s=0.1, reference=lambda: call("reference", 0.004)
    )
    assert 3 < stats["speedup_paired"] < 4.5 and stats["reference_p50_s"] >= 0.004
    # the reference's segments last about as long as the timed ones: a quarter of the calls, not as many
    assert calls["reference"] < calls["fn"] / 2
    low, high = stats["speedup_paired_ci"]
    assert low <= stats["speedup_paired"] <= high and "segments" in stats["pairing"]
    # settling (multi-threaded rows): a pause and an untimed call before each side's segment, same ratio
    settled = timing.measure(
        FakeBenchmark(),
        lambda: time.sleep(0.001),
        batch=1,
        cap_s=0.1,
        reference=lambda: time.sleep(0.004),
        settle_s=0.01,
    )
    assert 3 < settled["speedup_paired"] < 4.5 and settled["settle_s"] == 0.01


def test_runtimes_agree_and_absent_ones_say_why(tmp_path):
    torch.manual_seed(0)
    model = get_model("lenet").eval()
    exports = runtimes.Exports(tmp_path, calibration=torch.randn(64, 1, 28, 28))
    x = torch.randn(8, 1, 28, 28)
    cpu = torch.device("cpu")
    reference = runtimes.build("eager", model, cpu, 1, exports, "lenet").logits(x)
    for runtime in ("torchscript", "ort-fp32"):
        p = runtimes.build(runtime, model, cpu, 1, exports, "lenet")
        assert torch.get_num_threads() == 1 and p.info.get("intra_op_num_threads", 1) == 1
        torch.testing.assert_close(p.logits(x), reference, atol=1e-4, rtol=1e-4)
    onnx = exports.path("lenet", model, "onnx")
    assert exports.path("lenet", copy.deepcopy(model), "onnx") == onnx  # reused
    if not torch.cuda.is_available():
        assert runtimes.unavailable("eager", torch.device("cuda")) == "torch sees no CUDA device"
    with pytest.raises(ValueError, match="unknown runtime"):
        runtimes.unavailable("tensorflow", cpu)


def test_training_ratios_get_their_own_tolerance():
    baseline = check.make_baseline(check.metrics(run_rows(zoo_ips=8000.0, speedup=7.0)), {})
    assert baseline["tolerances"] == {
        "train-vs-tutorial/lenet": CHECK_TRAINING_TOLERANCE,
        "tutorial-accuracy-speedup/lenet": CHECK_TRAINING_TOLERANCE,
    }
    checks = check.compare(baseline, check.metrics(run_rows(zoo_ips=4400.0, speedup=3.9)))
    # -45% fails a speed-up (40%), not the training ratio (50%)
    assert {c.name for c in checks if not c.ok} == {"speedup/lenet/ort-fp32/b1"}
    checks = check.compare(baseline, check.metrics(run_rows(zoo_ips=4400.0)), tolerance=0.3)
    failed = {c.name for c in checks if not c.ok}
    assert "train-vs-tutorial/lenet" in failed  # --tolerance overrides every ratio's


def test_plain_pytest_says_the_benchmarks_were_not_run():
    # Under the default --benchmark-skip, bench/conftest.py deselects the benchmarks; the summary says so.
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "bench/test_training.py", "--co", "-q", "-p", "no:cacheprovider"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    line = "benchmarks not run: pytest --benchmark-only runs them"
    assert re.search(rf"^\d+ {line}$", done.stdout, re.M), done.stdout


SPIN = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"


@pytest.fixture
def busy_machine():
    """One busy process per CPU this process may use, ended after the test (and by itself within 20 s)."""
    n = len(cpu.affinity())
    if n > 8:
        pytest.skip(f"loading {n} CPUs to show contention would cost more than this test is worth")
    # Started through a shell that exits, so they are not this process's children (whose time counts as ours).
    start = f"{sys.executable} -c '{SPIN}' >/dev/null 2>&1 & echo $!"
    pids = [int(subprocess.check_output(["sh", "-c", start], text=True)) for _ in range(n)]
    time.sleep(0.5)
    yield n
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_busy_machine_is_measured_and_marked_and_meets_no_target(busy_machine):
    """The meter sees other processes, the default threads step aside, and a row measured under that load is
    marked contended and meets no target, however fast it looks."""
    model, x = get_model("lenet").eval(), torch.zeros(1, 1, 28, 28)
    with torch.inference_mode():
        stats = timing.measure(FakeBenchmark(), lambda: model(x), batch=1, cap_s=0.5)
    if not stats["contention"] > CONTENDED:
        pytest.skip(
            f"{busy_machine} busy processes did not show as contention here ({stats['contention']:.0%})"
        )
    if busy_machine > 1:
        assert cpu.default_threads(quiet=True) < min(busy_machine, cpu.TORCH_DEFAULT_THREADS)
    rows = run_rows(speedup=50.0, zoo_ips=90_000.0)  # figures that would meet every target
    for r in rows:
        r["contention"] = stats["contention"]
    found = results.targets(results.derive(rows))
    assert found and not any(t["met"] for t in found)
    assert all("contended" in t["note"] for t in found)


def deployed(rows, cold=0.5, peak=100.0, contention=0.01):
    """`rows` with the deployment fields every runtime row carries (bench/coldstart.py)."""
    for r in rows:
        if r["kind"] in ("inference", "accuracy"):
            how = {"runs": 3, "threads": 2, "peak_batch": 1000, "contention": contention}
            slow = 10 if r["runtime"] == "eager" else 1
            r.update(
                artifact_bytes=160_000, cold_start_s=cold * slow, peak_rss_mb=peak * slow, deployment=how
            )
    return rows


def test_openvino_runs_the_exports_with_a_hint_per_batch(tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'mnist-zoo[openvino]')")
    torch.manual_seed(0)
    model = get_model("lenet").eval()
    exports = runtimes.Exports(tmp_path, calibration=torch.randn(64, 1, 28, 28))
    x, cpu = torch.randn(130, 1, 28, 28), torch.device("cpu")
    reference = runtimes.build("eager", model, cpu, 2, exports, "lenet").logits(x)
    one = runtimes.build("openvino", model, cpu, 2, exports, "lenet", batch=1)
    many = runtimes.build("openvino", model, cpu, 2, exports, "lenet", batch=1000)
    assert (one.info["performance_hint"], one.info["num_streams"]) == ("LATENCY", 1)
    assert (many.info["performance_hint"], many.info["num_streams"]) == ("THROUGHPUT", 2)
    for p in (one, many):  # any batch runs, whatever the hint was chosen for (the batch axis is dynamic)
        assert p.info["inference_num_threads"] == 2 and p.info["inference_precision"] == "f32"
        torch.testing.assert_close(p.logits(x), reference, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(p.logits(x[:1]), reference[:1], atol=1e-4, rtol=1e-4)
    int8 = runtimes.build("openvino-int8", model, cpu, 1, exports, "lenet", batch=64)
    assert int8.info["int8_layers"].startswith("4 of 4")  # its own int8 kernels, not fp32 behind our back
    assert (int8.logits(x).argmax(1) == reference.argmax(1)).float().mean() > 0.9


def test_an_absent_openvino_is_a_skip_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    reason = runtimes.unavailable("openvino-int8", torch.device("cpu"))
    assert reason == "openvino is not installed (pip install 'mnist-zoo[openvino]')"


def test_every_runtime_loads_an_artifact(tmp_path):
    model = get_model("mlp").eval()
    exports = runtimes.Exports(tmp_path, calibration=None)
    path = runtimes.artifact("eager", model, exports, "mlp")
    assert path == runtimes.artifact("compile", model, exports, "mlp") and path.stat().st_size > 7_850 * 4
    assert set(runtimes.ARTIFACT_KIND) == set(runtimes.RUNTIMES)


def test_cold_start_is_a_fresh_process_that_imports_only_its_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    model = get_model("mlp").eval()
    path = runtimes.artifact("ort-fp32", model, runtimes.Exports(tmp_path, None), "mlp")
    costs = coldstart.measure("ort-fp32", path, "mlp", threads=1, runs=1)
    assert 0 < costs["cold_start_s"] < 60 and costs["deployment"]["runs"] == 1
    # its own memory: numpy and onnxruntime, far under this pytest process's (torch alone is 300 MB or more)
    assert 10 < costs["peak_rss_mb"] < 300
    with pytest.raises(RuntimeError, match="no such file"):
        coldstart.measure("ort-fp32", tmp_path / "missing.onnx", "mlp", threads=1, runs=1)


def test_bench_threads_all_sweeps_every_cpu():
    from bench.conftest import _threads

    assert _threads("all", idle=1) == tuple(range(1, int(cpu.available()) + 1))
    assert _threads("2,1", idle=1) == (1, 2) and _threads(None, idle=2) == (2,)


def test_summary_shows_deployment_costs_and_the_best_thread_counts():
    rows = [
        inference("lenet", rt, b, p50, threads=t)
        for rt, p50 in (("eager", 4e-4), ("ort-fp32", 1e-4))
        for b in (1, 1000)
        for t in (1, 2)
    ]
    rows[-1]["p50_s"] /= 3  # ORT at batch 1000 is 3x faster at 2 threads than at 1
    out = io.StringIO()
    report.render(doc_of(deployed(rows)), out, width=250)
    text = out.getvalue()
    assert "Deployment" in text and "5.00 s" in text and "0.50 s" in text and "156 KiB" in text
    threads = text.split("Threads")[1].split("Inference")[0]
    assert "2 3.00x" in threads and "1 1.00x" in threads


def test_plot_writes_the_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import plot

    results = tmp_path / "run.json"
    rows = deployed(run_rows()) + [
        inference("lenet", "eager", 64, 1e-3),
        inference("lenet", "eager", 1, 3e-4, 1),
    ]
    results.write_text(json.dumps(doc_of(rows)))
    written = plot.plot_run(results, tmp_path / "out")
    assert [p.name for p in written] == ["latency.png", "threads.png", "deployment.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    assert bench_main(["plot", str(tmp_path / "none.json")]) == 1
    results.write_text(json.dumps(doc_of(training())))
    with pytest.raises(UserError, match="no CPU inference rows"):
        plot.plot_run(results, tmp_path / "out")


def test_compare_puts_the_two_newest_saved_runs_side_by_side(tmp_path, capsys, monkeypatch):
    from pytest_benchmark.utils import get_machine_id

    from bench import history

    storage = tmp_path / ".benchmarks"
    monkeypatch.chdir(tmp_path)
    assert bench_main(["compare"]) == 1 and "0 saved run(s)" in capsys.readouterr().err
    folder = storage / get_machine_id()
    folder.mkdir(parents=True)
    for n, speedup in ((1, 2.0), (2, 7.0), (3, 3.5)):  # run 3 is 2x slower than run 2 in ORT fp32
        rows = deployed(run_rows(speedup=speedup))
        (folder / f"000{n}_abc.json").write_text(json.dumps(doc_of(rows)))
    assert history.pick([], storage) == (folder / "0002_abc.json", folder / "0003_abc.json")
    assert history.pick(["0001"], storage)[0] == folder / "0001_abc.json"
    assert bench_main(["compare", "--width", "250"]) == 0
    text = capsys.readouterr().out
    assert "0002_abc.json" in text and "0003_abc.json" in text
    line = next(line for line in text.splitlines() if "ORT fp32" in line and "µs" in line)
    assert "50 µs" in line and "100 µs" in line and "0.50x" in line  # half as fast now
    assert bench_main(["compare", "0009"]) == 1
    assert "no saved run matches '0009'" in capsys.readouterr().err


def test_a_baseline_requires_no_floor_of_an_optional_runtime():
    rows = run_rows() + [accuracy("lenet", "openvino", 0.991), accuracy("lenet", "openvino-int8", 0.99)]
    fresh = check.metrics(rows)
    assert "accuracy/lenet/openvino" in fresh  # judged when it ran
    required = check.make_baseline(fresh, {})["required"]
    assert "accuracy/lenet/ort-int8" in required and not [n for n in required if "openvino" in n]
