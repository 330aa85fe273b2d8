"""The harness: stratified folds and subsets, saved runs and Ctrl-C, and cv / evaluate --seeds / compare end to
end on small subsets (1 epoch, ~1,000 images: seconds, not a benchmark), with their JSON schemas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_zoo import plots, runs
from mnist_zoo.cli import main
from mnist_zoo.compare import mcnemar
from mnist_zoo.crossval import stratified_folds
from mnist_zoo.runs import decode_predictions, stratified_subset
from mnist_zoo.util import UserError

# Pinned threads: results and saved-run keys depend on the thread count, which a busy machine would lower.
QUICK = ["--epochs", "1", "--train-size", "900", "--no-progress", "--threads", "1"]
ENVIRONMENT = {"torch_version", "python_version", "device", "device_name", "threads", "cpu"}
SUMMARY = {"n", "mean", "std", "sem", "t_critical", "ci_low", "ci_high", "confidence", "min", "max"}


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _is_png(path: str) -> bool:
    with Image.open(path) as img:
        return img.format == "PNG"


def test_folds_stratified_disjoint_covering(train_split):
    labels = train_split.labels
    folds = stratified_folds(labels, 5, seed=0)
    everything = torch.cat(folds)
    assert len(everything) == len(labels) and len(torch.unique(everything)) == len(
        labels
    )  # disjoint, covering
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    per_class = torch.stack([torch.bincount(labels[f], minlength=10) for f in folds])  # [fold, digit]
    assert (per_class.max(0).values - per_class.min(0).values).max() <= 1  # every digit split evenly
    assert per_class.sum(0).tolist() == torch.bincount(labels, minlength=10).tolist()
    again, other = stratified_folds(labels, 5, seed=0), stratified_folds(labels, 5, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(folds, again, strict=True))  # seeded: reproducible
    assert not torch.equal(folds[0], other[0])


def test_folds_reject_bad_k():
    labels = torch.arange(30) % 10  # 3 of each digit
    with pytest.raises(UserError, match="at least 2"):
        stratified_folds(labels, 1)
    with pytest.raises(UserError, match="rarest digit"):
        stratified_folds(labels, 4)


def test_stratified_subset(train_split):
    labels = train_split.labels
    index = stratified_subset(labels, 1000)
    assert len(index) == 1000 and len(torch.unique(index)) == 1000
    share = torch.bincount(labels, minlength=10).double() / len(labels) * 1000
    counts = torch.bincount(labels[index], minlength=10).double()
    assert (counts - share).abs().max() <= 1
    assert torch.equal(index, stratified_subset(labels, 1000))
    with pytest.raises(UserError, match="--train-size"):
        stratified_subset(labels, 0)


def test_cv_end_to_end(tmp_path, capsys):
    report = tmp_path / "reports"
    assert main(["cv", "lenet", "--folds", "3", *QUICK, "--report-dir", str(report), "--json"]) == 0
    out = _json(capsys)
    assert out["schema"] == "mnist-zoo/cv/1" and out["complete"] and out["folds_done"] == 3
    assert set(out) >= ENVIRONMENT and set(out["accuracy"]) == SUMMARY
    folds = out["fold_results"]
    assert [f["heldout_images"] for f in folds] == [300, 300, 300]
    assert all(f["train_images"] == 600 and len(f["history"]) == 1 for f in folds)
    assert {"train_loss", "train_accuracy", "eval_loss", "eval_accuracy"} <= set(folds[0]["history"][0])
    assert out["accuracy"]["mean"] == pytest.approx(np.mean([f["accuracy"] for f in folds]))
    assert json.loads((report / "cv-lenet.json").read_text()) == out  # the saved record is what was printed
    sizes = {"curves": plots.CURVES_SIZE, "scores": plots.BOX_SIZE}
    for name, path in out["plots"].items():
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == plots.pixel_size(sizes[name])


def test_cv_ctrl_c_keeps_finished_folds_and_resumes(tmp_path, capsys, monkeypatch):
    report, real_train, calls = tmp_path / "r", runs.train, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs, "train", interrupted)
    argv = ["cv", "dnn", "--folds", "3", *QUICK, "--report-dir", str(report), "--no-plots"]
    assert main(argv) == 130
    saved = json.loads((report / "cv-dnn.json").read_text())
    assert saved["folds_done"] == 1 and not saved["complete"] and len(saved["fold_results"]) == 1
    assert "1 finished fold(s) saved" in capsys.readouterr().err
    monkeypatch.setattr(runs, "train", real_train)
    assert main([*argv, "--json"]) == 0
    out = _json(capsys)
    assert out["complete"] and [f["reused"] for f in out["fold_results"]] == [True, False, False]
    assert out["fold_results"][0]["accuracy"] == saved["fold_results"][0]["accuracy"]


def test_evaluate_seeds_end_to_end(tmp_path, capsys):
    report = tmp_path / "reports"
    assert main(["evaluate", "mlp", "--seeds", "2", *QUICK, "--report-dir", str(report), "--json"]) == 0
    out = _json(capsys)
    assert out["schema"] == "mnist-zoo/seeds/1" and out["seeds"] == [0, 1] and set(out) >= ENVIRONMENT
    assert set(out["accuracy"]) == SUMMARY and out["accuracy"]["ci_low"] <= out["accuracy"]["mean"]
    assert out["test_images"] == 10_000 and out["train_images"] == 900
    accuracies = [r["accuracy"] for r in out["runs"]]
    assert accuracies[0] != accuracies[1]  # two seeds, two different models
    assert set(out["plots"]) == {"curves", "scores", "confusion", "errors"} and all(
        map(_is_png, out["plots"].values())
    )
    # the saved run carries the test predictions that the confusion matrix and McNemar are computed from
    run = json.loads(Path(out["runs"][0]["run_file"]).read_text())
    assert len(run["predictions"]) == 10_000 and run["seed"] == 0


def test_evaluate_training_options_need_seeds(capsys):
    assert main(["evaluate", "lenet", "--epochs", "2"]) == 1
    assert "--epochs only apply with --seeds" in capsys.readouterr().err
    assert main(["evaluate", "some/file.pt", "--seeds", "2"]) == 1
    assert "must be a zoo model" in capsys.readouterr().err


def test_compare_end_to_end(tmp_path, capsys, test_split):
    report = tmp_path / "reports"
    common = [*QUICK, "--report-dir", str(report), "--no-plots"]
    assert main(["evaluate", "mlp", "--seeds", "2", *common, "--json"]) == 0
    capsys.readouterr()
    assert main(["compare", "mlp", "dnn", "--seeds", "2", *common, "--json"]) == 0
    out = _json(capsys)
    assert out["schema"] == "mnist-zoo/compare/1" and [m["model"] for m in out["models"]] == ["mlp", "dnn"]
    assert [r["reused"] for r in out["models"][0]["runs"]] == [True, True]  # evaluate's runs, not retrained
    (pair,) = out["pairs"]
    assert {"a", "b", "difference", "mcnemar", "welch", "significant", "better", "words"} <= set(pair)
    assert [m["seed"] for m in pair["mcnemar"]] == [0, 1] and pair["welch"]["p_value"] is not None
    # McNemar's counts are those of the saved predictions, image by image
    saved = [json.loads(Path(s["runs"][0]["run_file"]).read_text()) for s in out["models"]]
    first = [decode_predictions(run["predictions"]) for run in saved]
    expected = mcnemar((first[0] == test_split.labels).numpy(), (first[1] == test_split.labels).numpy())
    assert {k: pair["mcnemar"][0][k] for k in expected} == expected
    assert out["plots"] == {} and out["plots_skipped"] == "--no-plots"
    assert (report / "compare-mlp-dnn.json").is_file()


def test_compare_text_output(tmp_path, capsys):
    assert (
        main(["compare", "mlp", "dnn", "--seeds", "1", *QUICK, "--report-dir", str(tmp_path), "--no-plots"])
        == 0
    )
    text = capsys.readouterr().out
    assert "is the difference real?" in text and "mlp vs dnn" in text and "One seed only" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "mlp"], "two or more different models"),
        (["compare", "mlp", "mlp"], "two or more different models"),
        (["compare", "mlp", "resnet"], "unknown model"),
        (["compare", "mlp", "dnn", "--seeds", "0"], "--seeds must be between"),
        (["cv", "lenet", "--folds", "1"], "--folds must be at least 2"),
        (["cv", "lenet", "--train-size", "0"], "--train-size must be between"),
        (["cv", "lenet", "--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main([*argv, "--report-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.mark.parametrize("command", ["cv", "compare", "predict"])
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "example: python -m mnist_zoo" in capsys.readouterr().out


def test_seeds_ctrl_c_keeps_finished_runs(tmp_path, capsys, monkeypatch):
    real_train, calls = runs.train, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs, "train", interrupted)
    argv = ["evaluate", "mlp", "--seeds", "2", *QUICK, "--report-dir", str(tmp_path), "--no-plots"]
    assert main(argv) == 130
    assert "1 run(s) finished and saved" in capsys.readouterr().err
    monkeypatch.setattr(runs, "train", real_train)
    assert main([*argv, "--json"]) == 0
    assert [r["reused"] for r in _json(capsys)["runs"]] == [True, False]
