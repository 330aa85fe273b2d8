"""The command line as a user meets it: help with examples, JSON on stdout, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export import cli as export_cli
from mnist_zoo import data
from mnist_zoo.checkpoint import checkpoint_path
from mnist_zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_zoo", *args], capture_output=True, text=True)


def test_help_shows_examples(capsys):
    proc = run("--help")
    assert proc.returncode == 0 and "python -m mnist_zoo all" in proc.stdout
    for command in ("all", "train", "evaluate", "list"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        assert f"example: python -m mnist_zoo {command}" in capsys.readouterr().out


def test_unknown_model_is_one_line_no_traceback():
    proc = run("train", "resnet")
    assert proc.returncode == 1
    assert proc.stderr == "error: unknown model 'resnet'; choose from mlp, dnn, lenet, cnn\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "mlp", "--device", "cuda"], "no CUDA device"),
        (["train", "mlp", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "lenet", "--streams", "-1"], "--streams must be at least 1"),
        (["train", "mlp", "--data-dir", "/nonexistent"], "does not exist"),
        (["train", "mlp", "--data-dir", __file__], "is a file, not a directory"),
        (["evaluate", "lenet"], "train it first: python -m mnist_zoo train lenet"),
        (["evaluate", "/nonexistent/x.pt"], "no checkpoint at /nonexistent/x.pt"),
    ],
)
def test_errors_are_one_line(argv, message, capsys):
    if argv[-1] == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert message in captured.err


def test_train_json_then_evaluate_and_list(capsys, _isolated_checkpoints):
    assert main(["train", "mlp", "--epochs", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    keys = ("model", "recipe", "epochs", "seed", "device", "threads", "test_accuracy", "train_seconds")
    for key in (*keys, "images_per_second", "checkpoint", "torch_version"):
        assert key in record, key
    assert record["model"] == "mlp" and record["epochs"] == 1 and 0.85 < record["test_accuracy"] <= 1
    assert record["checkpoint"] == str(_isolated_checkpoints / "mlp.pt")

    assert main(["evaluate", "mlp", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_accuracy"] == pytest.approx(record["test_accuracy"])
    assert sum(map(sum, ev["confusion_matrix"])) == 10_000 and len(ev["per_class_accuracy"]) == 10

    assert main(["list", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["mlp"]["trained"] and rows["mlp"]["test_accuracy"] == pytest.approx(record["test_accuracy"])
    assert not rows["lenet"]["trained"]


def test_damaged_checkpoint_via_cli(capsys, _isolated_checkpoints):
    _isolated_checkpoints.mkdir(parents=True)
    (_isolated_checkpoints / "dnn.pt").write_bytes(b"\x00garbage")
    assert main(["evaluate", "dnn"]) == 1
    assert "is not a checkpoint" in capsys.readouterr().err
    assert main(["list"]) == 0  # the listing still works and marks it
    assert "damaged" in capsys.readouterr().out


def test_a_checkpoint_of_another_model_is_an_error_everywhere(small_trained, tmp_path, capsys):
    """dnn's weights saved as mlp.pt: evaluate, predict and export refuse it, list does not call mlp trained."""
    target = checkpoint_path("mlp")
    target.parent.mkdir(parents=True)
    target.write_bytes(small_trained("dnn")[2].read_bytes())
    (tmp_path / "seven.png").write_bytes(b"unused: the model is refused first")
    message = f"{target} holds a 'dnn' model, not 'mlp'"
    for command in (
        lambda: main(["evaluate", "mlp", "--threads", "1"]),
        lambda: main(["predict", "mlp", str(tmp_path / "seven.png"), "--threads", "1"]),
        lambda: export_cli.main(["mlp", "--onnx", "--out", str(tmp_path / "out")]),
    ):
        assert command() == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert main(["list", "--json"]) == 0
    row = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}["mlp"]
    assert row["trained"] is False and message in row["error"]
    assert main(["list"]) == 0
    assert "wrong model" in capsys.readouterr().out
    assert main(["evaluate", str(target), "--threads", "1", "--json"]) == 0  # by path, it is a dnn
    assert json.loads(capsys.readouterr().out)["model"] == "dnn"


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("{tmp}", "is a directory; give a file name such as {tmp}/mlp.pt"),
        ("{tmp}/missing/deeper/mlp.pt", "parent directory {tmp}/missing does not exist"),
        ("{tmp}/file/mlp.pt", "{tmp}/file is a file, not a directory"),
        ("/proc/mnist-zoo/mlp.pt", "cannot write in /proc"),
    ],
)
def test_checkpoint_path_is_checked_before_training(where, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(data, "load", no_work)
    where, message = where.replace("{tmp}", str(tmp_path)), message.replace("{tmp}", str(tmp_path))
    assert main(["train", "mlp", "--checkpoint", where, "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --checkpoint {where}: {message}") and err.count("\n") == 1, err


def test_same_seed_same_accuracy_through_the_cli(capsys):
    results = []
    for _ in range(2):
        assert main(["train", "dnn", "--epochs", "1", "--seed", "3", "--threads", "1", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out)["test_accuracy"])
    assert results[0] == results[1]


def _entry_points(tmp_path: Path) -> dict[str, list[str]]:
    """Every entry point, each given work that takes seconds after start-up (mlp has no checkpoint here)."""
    return {
        "mnist_zoo": ["train", "mlp", "--epochs", "2", "--threads", "1", "--no-progress", "--json"],
        "export": ["mlp", "--onnx", "--out", str(tmp_path / "out"), "--no-progress", "--json"],
        "bench": ["report", str(tmp_path / "absent.json")],
    }


def _torch_loading(pid: int) -> bool:
    """True once the process has mapped libtorch: it is past Python's own start-up, inside our imports."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc to see start-up progress")
def test_ctrl_c_at_any_moment_exits_130_with_one_line(tmp_path):
    """SIGINT during the imports (torch takes seconds), the data loading and the work: exit 130, one line.

    Delays count from the moment libtorch is mapped, so that they land in our code, not in Python's own
    interpreter start-up (which ends before any of ours runs). All processes run at once to keep this quick."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = []
    for module, args in _entry_points(tmp_path).items():
        delays = (0.0, 0.05, 0.3, 1.0) if module == "bench" else (0.0, 0.05, 0.3, 1.0, 3.0)
        for delay in delays:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=tmp_path,
            )
            runs.append((module, delay, proc))
    pending = {id(p): (module, delay, p) for module, delay, p in runs}
    started: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for key, (_, delay, p) in list(pending.items()):
            if key not in started and _torch_loading(p.pid):
                started[key] = time.monotonic()
            if key in started and time.monotonic() >= started[key] + delay:
                p.send_signal(signal.SIGINT)
                del pending[key]
        time.sleep(0.005)
    signalled = 0
    for module, delay, p in runs:
        out, err = p.communicate(timeout=120)
        if id(p) in pending:  # never seen loading torch (or finished first): not a case of this test
            continue
        if module == "bench" and p.returncode == 1 and "no such file" in err:
            continue  # bench finished before the signal came
        signalled += 1
        *notes, last = err.splitlines() or [""]
        assert (p.returncode, last) == (130, "error: interrupted"), (module, delay, err[-2000:])
        assert all(line.startswith("mnist-zoo: ") for line in notes), (module, delay, err[-2000:])
    assert signalled >= 10
