"""The command line as a user meets it: help with examples, JSON on stdout, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mnist_zoo.cli import main


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
    assert proc.stderr == "error: unknown model 'resnet'; choose from mlp, dnn, lenet\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "mlp", "--device", "cuda"], "no CUDA device"),
        (["train", "mlp", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "lenet", "--streams", "-1"], "--streams must be at least 1"),
        (["train", "mlp", "--data-dir", "/nonexistent"], "does not exist"),
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
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["list"]) == 0  # the listing still works and marks it
    assert "damaged" in capsys.readouterr().out


def test_same_seed_same_accuracy_through_the_cli(capsys):
    results = []
    for _ in range(2):
        assert main(["train", "dnn", "--epochs", "1", "--seed", "3", "--threads", "1", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out)["test_accuracy"])
    assert results[0] == results[1]
