"""sweep's grid and recipe files, which need no Ray (a sweep end to end is in test_cluster.py, beside the other
Ray tests, so that they share one local Ray)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from mnist_zoo import recipes, sweep
from mnist_zoo.cli import main
from mnist_zoo.recipes import recipe_for
from mnist_zoo.util import UserError


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
    assert "bad.json: recipe lacks name, epochs, batch_size, optimizer" in capsys.readouterr().err


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
