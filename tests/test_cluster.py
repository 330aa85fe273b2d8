"""Ray for many runs (--ray on cv, evaluate --seeds, compare): the same results as the sequential path, the runs
store written by the driver, one-line errors, and no Ray imported without --ray; and a sweep end to end on Ray
Tune, which must never look at the test set. The tests that run Ray share one local Ray of 2 CPUs and need the
ray extra (pip install 'mnist-zoo[ray]', tox -e ray); without it they are skipped with that reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mnist_zoo import cli, recipes
from mnist_zoo.cli import main

QUICK = ["--epochs", "1", "--train-size", "900", "--no-progress", "--threads", "1", "--no-plots", "--json"]
# What a run's result is: everything but the clock (times, speeds, contention) and where it was trained.
CLOCK = {
    "train_seconds",
    "images_per_second",
    "contention",
    "load_average",
    "reused",
    "run_file",
    "ray_node_id",
}


def test_no_ray_is_imported_without_ray(tmp_path):
    code = (
        "import sys; from mnist_zoo.cli import main; "
        f"main(['cv', 'mlp', '--folds', '2', *{QUICK!r}, '--report-dir', {str(tmp_path)!r}]); "
        "print('ray' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_a_model_name_given_to_ray_is_one_line(capsys, tmp_path):
    assert main(["compare", "--ray", "mlp", "dnn", "--report-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "put --ray after the model names" in err


def test_ray_asked_for_without_ray_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "ray", None
    )  # what an environment without the extra does on `import ray`
    for argv in (["cv", "mlp", "--ray"], ["sweep", "mlp", "--grid", "lr=0.1"]):
        assert main([*argv, "--report-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install 'mnist-zoo[ray]'" in err, err


def _runs(record: dict, key: str) -> list[dict]:
    """The runs' results without their clocks (the history's training times included)."""
    runs = [{k: v for k, v in r.items() if k not in CLOCK} for r in record[key]]
    for r in runs:
        r["history"] = [{k: v for k, v in row.items() if k != "train_seconds"} for row in r["history"]]
    return runs


def test_cv_on_ray_gives_the_sequential_results(ray_2_cpus, tmp_path, capsys):
    argv = ["cv", "mlp", "--folds", "2", *QUICK]
    assert main([*argv, "--report-dir", str(tmp_path / "seq")]) == 0
    sequential = json.loads(capsys.readouterr().out)
    assert main([*argv, "--report-dir", str(tmp_path / "ray"), "--ray"]) == 0
    on_ray = json.loads(capsys.readouterr().out)
    assert on_ray["complete"] and _runs(on_ray, "fold_results") == _runs(sequential, "fold_results")
    assert on_ray["accuracy"] == sequential["accuracy"]
    # the driver wrote each run under the same key the sequential path uses
    names = [sorted(p.name for p in (tmp_path / d / "runs").iterdir()) for d in ("seq", "ray")]
    assert names[0] == names[1] and len(names[0]) == 2
    assert main([*argv, "--report-dir", str(tmp_path / "ray"), "--ray"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [f["reused"] for f in again["fold_results"]] == [True, True]


def test_seeds_on_ray_are_saved_runs_with_predictions(ray_2_cpus, tmp_path, capsys):
    argv = ["compare", "mlp", "dnn", "--seeds", "2", *QUICK, "--report-dir", str(tmp_path), "--ray"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [[r["seed"] for r in m["runs"]] for m in out["models"]] == [[0, 1], [0, 1]]
    run = json.loads(Path(out["models"][1]["runs"][1]["run_file"]).read_text())
    assert run["model"] == "dnn" and run["seed"] == 1 and len(run["predictions"]) == 10_000
    assert run["threads"] == 1 and run["train_size"] == 900


def test_a_diverged_run_on_ray_is_one_line(ray_2_cpus, tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    from mnist_zoo import recipes

    monkeypatch.setitem(recipes.DEFAULTS, "mlp", replace(recipes.DEFAULTS["mlp"], lr=1e35))
    argv = ["evaluate", "mlp", "--seeds", "1", *QUICK, "--report-dir", str(tmp_path), "--ray"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err  # the note of what Ray runs, then the one-line error
    assert err.splitlines()[-1].startswith("error: mlp diverged at step ")


def test_sweep_ranks_configurations_on_held_out_images(ray_2_cpus, tmp_path, capsys, monkeypatch):
    real_load = cli.data.load

    def no_test_set(split, *args, **kwargs):
        assert split == "train", "a sweep must never load the test set"
        return real_load(split, *args, **kwargs)

    monkeypatch.setattr(cli.data, "load", no_test_set)
    argv = ["sweep", "mlp", "--grid", "lr=0.05,1e-5", "--folds", "2", "--epochs", "2", "--train-size", "600"]
    assert (
        main([*argv, "--threads", "1", "--report-dir", str(tmp_path), "--scheduler", "fifo", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["heldout"] == "cv folds" and out["images"] == 600 and len(out["trials"]) == 4
    assert all(t["finished"] and t["epochs_reached"] == 2 for t in out["trials"])  # fifo: none stopped
    best, worst = out["configurations"]
    assert best["grid"] == {"lr": 0.05} and best["finished"] == 2  # a learning rate of 1e-5 learns nothing
    assert best["accuracy"]["mean"] > worst["accuracy"]["mean"] + 0.2
    recipe = recipes.read_recipe_file(out["best_recipe_file"], "mlp")
    assert recipe.lr == 0.05 and recipe.epochs == 2
