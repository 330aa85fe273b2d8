"""What the harness commands share: their training options, the training data (--train-size), pictures that
honour --no-plots, and the small formatters for percentages and intervals.

Used by mnist_zoo/harness.py (cv, predict) and mnist_zoo/compare.py (evaluate --seeds, compare).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from mnist_zoo import data, plots
from mnist_zoo.runs import RunStore, stratified_subset
from mnist_zoo.train import RECIPES
from mnist_zoo.util import resolve_device, set_threads

out = Console()
err = Console(stderr=True)
# Options that `evaluate` honours only with --seeds (without it, evaluate scores the saved checkpoint).
SEED_ONLY = ("recipe", "epochs", "seed", "train_size", "report_dir", "no_plots", "no_progress", "fresh")


def study_args(p: argparse.ArgumentParser, evaluate: bool = False) -> None:
    """The options of every command that trains. On `evaluate` they default to None, so that using one
    without --seeds is caught rather than silently ignored, and their help says so."""
    group = p.add_argument_group("training (with --seeds only)") if evaluate else p

    def add(*flags: str, default=None, **kwargs) -> None:
        group.add_argument(*flags, default=None if evaluate else default, **kwargs)

    add("--recipe", choices=RECIPES, default="default", help="training recipe (default: default)")
    add("--epochs", type=int, help="override the recipe's epochs (fewer: faster, less accurate)")
    add("--seed", type=int, default=0, help="first seed (default: 0)")
    add(
        "--train-size",
        type=int,
        metavar="N",
        help="train on a stratified N-image subset of the 60k (default: all)",
    )
    add("--report-dir", help="JSON and pictures go here (default: $MNIST_ZOO_REPORTS or reports/)")
    add("--no-plots", action="store_true", default=False, help="numbers only, no pictures")
    add("--no-progress", action="store_true", default=False, help="no progress bar")
    add("--fresh", action="store_true", default=False, help="retrain instead of reusing saved runs")


def setup(args: argparse.Namespace) -> torch.device:
    set_threads(args.threads)
    return resolve_device(args.device)


def training_data(args: argparse.Namespace) -> tuple[data.Split, dict | None]:
    """The 60k training images, or the stratified --train-size subset of them (and how it was drawn)."""
    split = data.load("train", args.data_dir)
    size = getattr(args, "train_size", None)
    if size is None or size == len(split):
        return split, None
    return split.subset(stratified_subset(split.labels, size)), {"size": size, "stratified": True}


def draw_plots(args: argparse.Namespace, record: dict, draw: Callable[[], dict[str, Path]]) -> None:
    """record["plots"] = draw() (name -> path) unless --no-plots or matplotlib is missing; then say why."""
    record["plots"] = {}
    if getattr(args, "no_plots", False):
        record["plots_skipped"] = "--no-plots"
    elif not plots.available():
        record["plots_skipped"] = "matplotlib is not installed (pip install 'mnist-zoo[plots]')"
    else:
        record["plots"] = {name: str(path) for name, path in draw().items()}


def print_files(record: dict) -> None:
    """The pictures and the JSON record, one path a line."""
    if record.get("plots_skipped"):
        out.print(f"pictures skipped: {record['plots_skipped']}")
    for name, path in record.get("plots", {}).items():
        out.print(f"  {name:<16} {path}", highlight=False)
    if "report" in record:
        out.print(f"  {'results':<16} {record['report']}", highlight=False)


def mean_std(s: dict) -> str:
    return f"{s['mean']:.2%}" + (f" ± {s['std']:.2%}" if s["std"] is not None else "")


def interval(s: dict) -> str:
    return "needs 2+ runs" if s["ci_low"] is None else f"{s['ci_low'] * 100:.2f}-{s['ci_high']:.2%}"


def note_reused(store: RunStore) -> None:
    if store.reused:
        err.print(f"reused {store.reused} saved run(s) from {store.directory} (--fresh retrains them)")


def progress_enabled(args: argparse.Namespace) -> bool:
    return not (getattr(args, "no_progress", False) or args.json)
