"""Stratified k-fold cross-validation on the 60,000 training images (the test set is never touched).

    python -m mnist_zoo cv lenet --folds 5                 # per-fold accuracy, mean ± std, learning curves
    python -m mnist_zoo cv dnn --folds 10 --epochs 3 --json
    >>> from mnist_zoo.crossval import stratified_folds
    >>> held_out = stratified_folds(train_split.labels, k=5, seed=0)   # 5 disjoint index tensors

Each fold trains on the other k-1 folds and reports accuracy on the held-out one. The summary JSON is rewritten
(atomically) after every fold, so Ctrl-C keeps the finished folds; running the same command again reuses them.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from mnist_zoo.compare import summarize
from mnist_zoo.data import Split
from mnist_zoo.progress import Progress
from mnist_zoo.recipes import Recipe, steps_for
from mnist_zoo.runs import Executor, Job, RunStore, run_jobs
from mnist_zoo.util import UserError, environment, write_json

DEFAULT_FOLDS = 5
CV_SCHEMA = "mnist-zoo/cv/1"
FOLD_FIELDS = (
    "accuracy",
    "loss",
    "train_seconds",
    "history",
    "reused",
    "run_file",
)  # kept of each fold's run


def stratified_folds(labels: torch.Tensor, k: int, seed: int = 0) -> list[torch.Tensor]:
    """k disjoint, sorted index tensors covering every image, each with (within one image) every digit's share.

    Images are shuffled within their class (seeded), laid out class after class, and dealt to folds in turn:
    a run of n_c images of class c dealt round k folds gives each fold n_c // k or n_c // k + 1 of them."""
    labels = labels.cpu()
    smallest = int(torch.bincount(labels).min()) if len(labels) else 0
    if k < 2:
        raise UserError(f"--folds must be at least 2, got {k}")
    if k > smallest:
        raise UserError(
            f"--folds {k} is more than the {smallest} images of the rarest digit; use fewer folds"
        )
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen)
    ordered = perm[torch.sort(labels[perm], stable=True).indices]
    fold_of = torch.arange(len(labels)) % k
    return [torch.sort(ordered[fold_of == f]).values for f in range(k)]


def cross_validate(
    model: str,
    recipe: Recipe,
    split: Split,
    *,
    folds: int,
    seed: int,
    store: RunStore,
    executor: Executor,
    summary_path: Path,
    progress: bool = True,
    subset: dict | None = None,
) -> dict:
    """Run (or reuse, from `store`) every fold on `executor`, rewriting `summary_path` after each; returns the
    summary.

    `subset` describes how `split` was drawn from the training set (for the run keys and the record)."""
    held_out = stratified_folds(split.labels, folds, seed)
    summary = {
        "schema": CV_SCHEMA,
        "command": "cv",
        "model": model,
        "folds": folds,
        "seed": seed,
        "recipe": asdict(recipe),
        "images": len(split),
        "subset": subset,
        "complete": False,
        "folds_done": 0,
        "fold_results": [],
        "accuracy": None,
        "wall_seconds": 0.0,
        **environment(store.device, store.threads),
    }
    jobs = []
    for f, held in enumerate(held_out):
        rest = torch.ones(len(split), dtype=torch.bool)
        rest[held] = False
        config = {"data": "train", "subset": subset, "fold": f, "folds": folds, "fold_seed": seed}
        train_on = ("train", rest.nonzero().squeeze(1))
        jobs.append(Job(model, recipe, seed, f"cv{folds}-fold{f + 1}", config, train_on, ("train", held)))
    write_json(summary_path, summary)  # from the start, the file on disk describes this run, not an older one
    start = time.perf_counter()

    def finished(f: int, record: dict) -> None:  # called in fold order: the summary grows fold by fold
        held = len(held_out[f])
        result = {"fold": f + 1, "train_images": len(split) - held, "heldout_images": held}
        result.update({k: record[k] for k in FOLD_FIELDS})
        summary["fold_results"].append(result)
        accuracy = summarize([r["accuracy"] for r in summary["fold_results"]])
        summary.update(folds_done=f + 1, complete=f + 1 == folds, accuracy=accuracy)
        summary["wall_seconds"] = time.perf_counter() - start
        write_json(summary_path, summary)

    total = sum(steps_for(len(split) - len(h), recipe) for h in held_out)
    with Progress(f"cv {model}", total, progress) as bar:
        run_jobs(jobs, {"train": split}, store, executor, progress=bar, on_record=finished)
    return summary
