"""sweep's grid and recipe files, which need no Ray (a sweep end to end is in test_cluster.py, beside the other
Ray tests, so that they share one local Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from mnist_zoo import recipes, sweep
from mnist_zoo.cli import main
from mnist_zoo.recipes import recipe_for
from mnist_zoo.util import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_grid_parses_and_refuses_what_cannot_train():
    assert sweep.parse_grid(["lr=0.05,0.1", "batch-size=128,256,128"]) == {
        "lr": [0.05, 0.1],
        "batch_size": [128, 256],
    }
    for bad, message in [
        (["lr"], "KEY=V1,V2"),
        (["colour=red"], "KEY one of"),
        (["lr=0.1", "lr=0.2"], "given twice"),
        (["batch_size=1.5"], "are not all ints"),
    ]:
        with pytest.raises(UserError, match=message):
            sweep.parse_grid(bad)
    with pytest.raises(UserError, match="--grid lr must be a finite positive number, got -0.1"):
        sweep.configurations(recipe_for("mlp"), {"lr": [0.1, -0.1]})
    assert len(sweep.configurations(recipe_for("mlp"), {"lr": [0.1, 0.2], "epochs": [1, 2, 3]})) == 6


def test_train_takes_a_recipe_file(tmp_path, capsys):
    recipe = replace(recipe_for("mlp"), name="sweep", epochs=1, lr=0.04, batch_size=256)
    path = recipes.write_recipe_file(tmp_path / "best.json", "mlp", recipe, {"grid": {"lr": 0.04}})
    argv = ["train", "mlp", "--recipe-file", str(path), "--threads", "1", "--no-progress", "--json"]
    assert main([*argv, "--checkpoint", str(tmp_path / "mlp.pt")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["recipe_details"] == asdict(recipe) and record["recipe"] == "sweep"
    assert main(["train", "dnn", "--recipe-file", str(path)]) == 1
    assert "a recipe for 'mlp', not 'dnn'" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(
        '{"schema": "mnist-zoo/recipe/1", "model": "mlp", "recipe": {"lr": 1}}'
    )
    assert main(["train", "mlp", "--recipe-file", str(tmp_path / "bad.json")]) == 1
    assert "bad.json: recipe lacks name, epochs, batch_size\n" in capsys.readouterr().err


def test_sweep_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert (
        "example: python -m mnist_zoo sweep lenet --grid lr=0.1,0.15 --folds 2 --ray"
        in capsys.readouterr().out
    )


def test_asha_is_refused_where_it_would_compare_single_folds(tmp_path, capsys):
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'mnist-zoo[ray]' (tox -e ray)")
    argv = ["sweep", "mlp", "--grid", "lr=0.05,0.1", "--folds", "2", "--scheduler", "asha"]
    assert main([*argv, "--report-dir", str(tmp_path)]) == 1
    assert "use fifo" in capsys.readouterr().err  # before any Ray starts or any run trains


def test_a_grid_is_capped_before_it_is_built():
    grid = {"lr": [0.01 * i for i in range(1, 101)], "batch_size": list(range(1, 101)), "epochs": [1, 2, 3]}
    message = (
        r"--grid asks for 30,000 trials \(100 lr x 100 batch_size x 3 epochs\); a sweep runs at most 1,000"
    )
    with pytest.raises(UserError, match=message):
        sweep.configurations(recipe_for("mlp"), grid)
    assert sweep.check_trials({"lr": [0.1, 0.2]}, runs_per_config=500) == 1_000
    with pytest.raises(UserError, match=r"1,002 trials \(2 lr x 501 seeds and folds\)"):
        sweep.check_trials({"lr": [0.1, 0.2]}, runs_per_config=501)


def test_a_huge_grid_is_one_line_from_the_command_line(capsys):
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'mnist-zoo[ray]' (tox -e ray)")
    values = ",".join(str(i) for i in range(1, 2_001))
    assert main(["sweep", "mlp", "--grid", f"batch-size={values}", "--grid", "epochs=1,2,3"]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == "error: --grid asks for 6,000 trials (2000 batch_size x 3 epochs); a sweep runs at most 1,000\n"
    )


def test_ctrl_c_ends_a_sweep(tmp_path):
    """One SIGINT while Tune runs trials: exit 130 at once, no record and no recipe file (Tune's own handler
    would wind the sweep down and rank what it had)."""
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'mnist-zoo[ray]' (tox -e ray)")
    argv = [
        "sweep",
        "mlp",
        "--grid",
        "lr=0.05,0.1",
        "--epochs",
        "5",
        "--train-size",
        "20000",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_zoo", *argv, "--report-dir", "r"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    trials = tmp_path / "r" / "tune" / "sweep-mlp"
    while not (trials.is_dir() and any("_trial" in p.name for p in trials.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep did not start its trials"
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.rstrip().splitlines()[-1] == "error: interrupted", err[-2000:]
    assert not (tmp_path / "r" / "sweep-mlp.json").exists()
    assert not (tmp_path / "r" / "sweep-mlp-best.json").exists()
