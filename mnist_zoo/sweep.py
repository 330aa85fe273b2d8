"""Hyperparameter sweeps on Ray Tune, scored on held-out training images, never on the test set.

    python -m mnist_zoo sweep lenet --grid lr=0.1,0.15 --folds 2
    python -m mnist_zoo sweep dnn --grid lr=0.05,0.1,0.2 --grid batch_size=128,256 --seeds 2 --ray auto
    python -m mnist_zoo train dnn --recipe-file reports/sweep-dnn-best.json     # the winner, on all 60k

A configuration is the model's recipe (--recipe, --epochs) with the grid's values put in. Every configuration
is trained once per seed (--seeds) and per fold: with --folds K, on K-1 of K stratified folds of the training
set, scored on the last; without, on 50,000 images and scored on a stratified validation split of the other
10,000. Each such run is a Tune trial on --threads CPUs that reports its held-out accuracy after every epoch;
ASHA (--scheduler asha, the default with one run per configuration) stops the trials that trail the others at
the same epoch, FIFO (the default with --folds or --seeds, where ASHA is refused: it would stop single folds of
a configuration and rank it on the survivors) runs all to the end. Configurations are ranked by the mean
held-out accuracy of their finished runs (those stopped early rank after those that finished), with the
spread over seeds and folds, and the best is written as a recipe file (recipes.py) that `train --recipe-file`
reads. Sweeps always run on Ray (a local one without --ray ADDRESS).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mnist_zoo import cluster
from mnist_zoo.compare import summarize
from mnist_zoo.crossval import stratified_folds
from mnist_zoo.data import Split
from mnist_zoo.recipes import Recipe, check
from mnist_zoo.train import train
from mnist_zoo.util import UserError

SWEEP_SCHEMA = "mnist-zoo/sweep/1"
# The recipe settings a grid may vary, and their types.
GRID_KEYS = {"lr": float, "batch_size": int, "epochs": int, "momentum": float, "weight_decay": float}
GRID_KEYS.update(warmup=float)
VALIDATION_FOLDS = 6  # without --folds: the first of 6 stratified folds (10,000 of 60,000 images) is held out
SCHEDULERS = ("asha", "fifo")
# The most trials one sweep may ask for (configurations x seeds x folds): Tune holds every trial in memory, and a
# grid is a product that grows fast (a mistyped grid of 3,000,000 took 4.2 GB before it trained anything).
MAX_TRIALS = 1_000
METRIC = "heldout_accuracy"
# ASHA: every trial runs at least GRACE epochs; at each rung only the best 1/REDUCTION of the trials seen there
# go on. 2 rather than Tune's default 4: grids here are small, and 4 would stop all but one in four.
GRACE, REDUCTION = 1, 2


def parse_grid(items: list[str]) -> dict[str, list]:
    """["lr=0.05,0.1", "batch_size=128,256"] -> {"lr": [0.05, 0.1], "batch_size": [128, 256]}."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in GRID_KEYS or not values.strip():
            raise UserError(
                f"--grid takes KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}, got {item!r}"
            )
        if key in grid:
            raise UserError(f"--grid {key} is given twice; put all its values in one: {key}=V1,V2")
        try:
            grid[key] = list(dict.fromkeys(GRID_KEYS[key](v) for v in values.split(",")))
        except ValueError:
            raise UserError(f"--grid {key}: {values!r} are not all {GRID_KEYS[key].__name__}s") from None
    return grid


def check_trials(grid: dict[str, list], runs_per_config: int = 1) -> int:
    """The number of trials of the grid (configurations x runs_per_config), if at most MAX_TRIALS; counted
    without building the combinations."""
    sizes = {key: len(values) for key, values in grid.items()}
    trials = math.prod(sizes.values()) * runs_per_config
    if trials > MAX_TRIALS:
        each = " x ".join(f"{n} {key}" for key, n in sizes.items())
        runs = f" x {runs_per_config} seeds and folds" if runs_per_config > 1 else ""
        raise UserError(
            f"--grid asks for {trials:,} trials ({each}{runs}); a sweep runs at most {MAX_TRIALS:,}"
        )
    return trials


def configurations(base: Recipe, grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values (at most MAX_TRIALS), each checked as a recipe."""
    check_trials(grid)
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    for c in combos:
        check(replace(base, **c), lambda key: f"--grid {key}")
    return combos


def _trial(
    config: dict,
    *,
    data: Split,
    held_out: list[torch.Tensor],
    model: str,
    base: Recipe,
    threads: int,
    device: str,
) -> None:
    """One Tune trial: one configuration, seed and fold; reports held-out accuracy after every epoch."""
    import ray
    from ray import tune

    held = held_out[config["fold"]]
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[held] = False

    node = ray.get_runtime_context().get_node_id()  # which Ray node trained it, in the record

    def report(row: dict) -> None:
        metrics = {METRIC: row["eval_accuracy"], "heldout_loss": row["eval_loss"], "epoch": row["epoch"]}
        tune.report({**metrics, "ray_node_id": node})

    recipe = replace(base, **config["recipe"])
    train(
        model,
        recipe,
        data.subset(rest),
        data.subset(held),
        seed=config["seed"],
        device=device,
        threads=threads,
        on_eval=report,
    )


def run(
    model: str,
    base: Recipe,
    grid: dict[str, list],
    split: Split,
    *,
    seeds: list[int],
    folds: int | None,
    scheduler: str,
    address: str | None,
    threads: int,
    device: torch.device,
    storage: Path,
) -> dict:
    """Run the sweep on Ray Tune; returns its record (configurations ranked best first)."""
    configs = configurations(base, grid)
    held_out = stratified_folds(split.labels, folds or VALIDATION_FOLDS, seed=seeds[0])
    fold_ids = list(range(folds)) if folds else [0]
    with cluster.connected(address) as ray:
        try:
            from ray import tune
            from ray.tune.schedulers import ASHAScheduler
        except ImportError as e:
            raise UserError(f"sweep needs Ray Tune ({e.name} is missing): {cluster.EXTRA}") from None
        cpus = ray.cluster_resources().get("CPU", 0)
        trainable = tune.with_parameters(
            _trial, data=split, held_out=held_out, model=model, base=base, threads=threads, device=str(device)
        )
        resources = {"cpu": threads, "gpu": 1 if device.type == "cuda" else 0}
        longest = max(replace(base, **c).epochs for c in configs)
        asha = ASHAScheduler(max_t=longest, grace_period=GRACE, reduction_factor=REDUCTION)
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={
                "recipe": tune.grid_search(configs),
                "seed": tune.grid_search(seeds),
                "fold": tune.grid_search(fold_ids),
            },
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", scheduler=asha if scheduler == "asha" else None
            ),
            run_config=tune.RunConfig(name=f"sweep-{model}", storage_path=str(storage.absolute()), verbose=0),
        )
        # Ctrl-C must end the sweep as it ends every command (exit 130, Ray shut down), not ask Tune to wind
        # down and then rank what it had: Tune's own SIGINT handler would do that.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        with contextlib.redirect_stdout(sys.stderr):  # Tune prints its own tables: stdout is ours (--json)
            results = tuner.fit()
    trials = [_trial_record(results[i], base) for i in range(len(results))]
    ranked = _rank(configs, base, trials)
    record = {
        "schema": SWEEP_SCHEMA,
        "command": "sweep",
        "model": model,
        "recipe": asdict(base),
        "grid": grid,
    }
    record.update(seeds=seeds, folds=folds, scheduler=scheduler, images=len(split))
    record.update(
        heldout="cv folds" if folds else f"validation split of {len(held_out[0]):,} training images"
    )
    record.update(cpus=cpus, threads=threads, concurrent=int(cpus // threads), trials=trials)
    record.update(configurations=ranked, tune_results=str(storage.absolute() / f"sweep-{model}"))
    return record


def _trial_record(result, base: Recipe) -> dict:
    config, metrics = result.config, result.metrics or {}
    epochs = replace(base, **config["recipe"]).epochs
    reached = int(metrics.get("training_iteration", 0))
    trial = {"recipe": config["recipe"], "seed": config["seed"], "fold": config["fold"], "epochs": epochs}
    trial.update(epochs_reached=reached, accuracy=metrics.get(METRIC), finished=reached == epochs)
    trial["ray_node_id"] = metrics.get("ray_node_id")
    if result.error is not None:  # a diverged run (or a crashed one): the reason, in one line
        trial["error"] = (
            str(getattr(result.error, "cause", None) or result.error).strip().splitlines() or ["?"]
        )[-1]
        trial["finished"] = False
    return trial


def _rank(configs: list[dict], base: Recipe, trials: list[dict]) -> list[dict]:
    """One row per configuration: its runs' held-out accuracy (finished runs only) and how many finished;
    configurations whose every run finished first, then by mean accuracy."""
    rows = []
    for c in configs:
        mine = [t for t in trials if t["recipe"] == c]
        done = [t["accuracy"] for t in mine if t["finished"]]
        row = {"grid": c, "recipe": asdict(replace(base, **c)), "runs": len(mine), "finished": len(done)}
        row.update(accuracy=summarize(done) if done else None, errors=sum("error" in t for t in mine))
        row["stopped_at"] = sorted(
            {t["epochs_reached"] for t in mine if not t["finished"] and "error" not in t}
        )
        rows.append(row)
    rows.sort(
        key=lambda r: (r["finished"] == r["runs"], r["accuracy"]["mean"] if r["accuracy"] else -1),
        reverse=True,
    )
    return rows
