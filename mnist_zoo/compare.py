"""`evaluate MODEL --seeds N` and `compare MODEL MODEL...`: retrain over seeds, score on the test set, and say
which differences are real.

    python -m mnist_zoo evaluate lenet --seeds 5             # mean ± std, 95% interval, pictures
    python -m mnist_zoo compare mlp dnn lenet --seeds 3      # side by side + significance, in words
    python -m mnist_zoo compare dnn lenet --seeds 5 --epochs 3 --json

Writes <report dir>/seeds-<model>.json (+ -curves, -scores, -confusion, -errors .png) for every model, and for
compare also compare-<models>.json and compare-<models>-scores.png. The confusion matrix and the misclassified
digits are those of each model's first seed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rich.table import Table

from mnist_zoo import data, plots
from mnist_zoo.crossval import write_json
from mnist_zoo.models import list_models, model_info
from mnist_zoo.reporting import (
    draw_plots,
    err,
    interval,
    mean_std,
    note_reused,
    out,
    print_files,
    progress_enabled,
    setup,
    training_data,
)
from mnist_zoo.runs import RunStore, StudyProgress, report_dir, steps_for
from mnist_zoo.seeds import COMPARE_SCHEMA, MAX_SEEDS, SEEDS_SCHEMA, compare_pairs, confusion, seed_study
from mnist_zoo.stats import format_p
from mnist_zoo.train import recipe_for
from mnist_zoo.util import UserError, environment


def seed_pictures(study: dict, predictions: list[torch.Tensor], test: data.Split, stem: str) -> dict:
    """Learning curves and score box plot of every seed; confusion matrix and misclassified digits of the first."""
    m, runs = study["model"], study["runs"]
    first, seed0 = predictions[0], runs[0]["seed"]
    wrong = (first != test.labels).nonzero().flatten()
    captions = [f"{int(test.labels[i])} → {int(first[i])}" for i in wrong.tolist()]
    shown = min(len(wrong), plots.MAX_GRID)
    curves = [(f"seed {r['seed']}", r["history"]) for r in runs]
    return {
        "curves": plots.learning_curves(
            curves,
            f"{stem}-curves.png",
            f"{m}: {len(runs)} seed(s), test set after each epoch",
            heldout="test",
        ),
        "scores": plots.score_boxplot(
            {m: [r["accuracy"] for r in runs]}, f"{stem}-scores.png", f"{m}: {len(runs)} seed(s)", "test set"
        ),
        "confusion": plots.confusion_heatmap(
            confusion(first, test.labels),
            f"{stem}-confusion.png",
            f"{m} (seed {seed0}): {runs[0]['accuracy']:.2%} of {len(test):,} test images right",
        ),
        "errors": plots.digit_grid(
            test.images[wrong],
            captions,
            f"{stem}-errors.png",
            f"{m} (seed {seed0}): {shown} of {len(wrong)} misclassified test digits (true → predicted)",
        ),
    }


def _studies(args: argparse.Namespace, models: list[str], n_seeds: int):
    """Train (or reuse) n_seeds runs of every model under one progress bar."""
    if not 1 <= n_seeds <= MAX_SEEDS:
        raise UserError(f"--seeds must be between 1 and {MAX_SEEDS}, got {n_seeds}")
    recipes = {m: recipe_for(m, args.recipe or "default", epochs=args.epochs) for m in models}
    first = args.seed or 0
    seeds = list(range(first, first + n_seeds))
    device = setup(args)
    train, subset = training_data(args)
    test = data.load("test", args.data_dir)
    store = RunStore(report_dir(args.report_dir), fresh=bool(args.fresh))
    total = sum(steps_for(len(train), recipes[m]) * n_seeds for m in models)
    studies, predictions = [], []
    try:
        with StudyProgress("train", total, progress_enabled(args)) as bar:
            for m in models:
                study, preds = seed_study(
                    m, recipes[m], train, test, seeds=seeds, device=device, store=store, progress=bar, subset=subset
                )  # fmt: skip
                studies.append(study)
                predictions.append(preds)
    except KeyboardInterrupt:
        err.print(
            f"{store.saved} run(s) finished and saved in {store.directory}; the same command again reuses them"
        )
        raise
    note_reused(store)
    return studies, predictions, test, device


def evaluate_seeds(args: argparse.Namespace) -> int:
    """`evaluate MODEL --seeds N`: retrain MODEL with N seeds; test accuracy mean ± std and a 95% interval."""
    if args.model not in list_models():
        raise UserError(
            f"--seeds retrains from scratch, so MODEL must be a zoo model ({', '.join(list_models())}), "
            f"not {args.model!r}"
        )
    start = time.perf_counter()
    studies, predictions, test, device = _studies(args, [args.model], args.seeds)
    study = studies[0]
    stem = report_dir(args.report_dir) / f"seeds-{args.model}"
    record = {"schema": SEEDS_SCHEMA, "command": "evaluate", **study, "report": f"{stem}.json"}
    draw_plots(args, record, lambda: seed_pictures(study, predictions[0], test, str(stem)))
    record.update(wall_seconds=time.perf_counter() - start, **environment(device))
    write_json(stem.with_suffix(".json"), record)
    if args.json:
        print(json.dumps(record))
        return 0
    t = Table(
        title=f"{args.model}: {len(study['runs'])} seed(s), each trained on {study['train_images']:,} images "
        f"and scored on {study['test_images']:,} test images"
    )
    for col in ("seed", "test accuracy", "test loss", "train s", "images/s"):
        t.add_column(col, justify="right")
    for r in study["runs"]:
        saved = " (saved)" if r["reused"] else ""
        t.add_row(
            str(r["seed"]),
            f"{r['accuracy']:.2%}",
            f"{r['loss']:.4f}",
            f"{r['train_seconds']:.1f}{saved}",
            f"{r['images_per_second']:,.0f}",
        )
    out.print(t)
    s = study["accuracy"]
    out.print(
        f"[bold]{args.model}[/]: test accuracy [bold]{mean_std(s)}[/] (mean ± std over {s['n']} seed(s)); "
        f"95% interval of the mean: {interval(s)}"
    )
    print_files(record)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    models = args.models or list_models()
    for m in models:
        model_info(m)
    if len(set(models)) != len(models) or len(models) < 2:
        raise UserError("compare needs two or more different models, e.g. compare mlp dnn lenet")
    start = time.perf_counter()
    studies, predictions, test, device = _studies(args, models, args.seeds)
    pairs = compare_pairs(studies, predictions, test.labels)
    folder = report_dir(args.report_dir)
    stem = folder / f"compare-{'-'.join(models)}"
    record = {"schema": COMPARE_SCHEMA, "command": "compare", "models": studies, "pairs": pairs}
    record["report"] = f"{stem}.json"

    def draw() -> dict:
        scores = {s["model"]: [r["accuracy"] for r in s["runs"]] for s in studies}
        title = f"test accuracy, {args.seeds} seed(s) per model"
        paths = {"scores": plots.score_boxplot(scores, f"{stem}-scores.png", title, "test set")}
        for s, p in zip(studies, predictions, strict=True):
            for name, path in seed_pictures(s, p, test, str(folder / f"seeds-{s['model']}")).items():
                paths[f"{s['model']} {name}"] = path
        return paths

    draw_plots(args, record, draw)
    record.update(wall_seconds=time.perf_counter() - start, **environment(device))
    write_json(stem.with_suffix(".json"), record)
    if args.json:
        print(json.dumps(record))
        return 0
    print_tables(studies, pairs, args.seeds, len(test))
    print_files(record)
    return 0


def _p(p: float | None) -> str:
    return format_p(p).removeprefix("p ").removeprefix("= ")


def print_tables(studies: list[dict], pairs: list[dict], seeds: int, test_images: int) -> None:
    t = Table(
        title=f"{len(studies)} models, {seeds} seed(s) each, scored on the same {test_images:,} test images"
    )
    for col in ("model", "params", "accuracy (mean ± std)", "95% CI", "range", "train s"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for s in studies:
        a, ts = s["accuracy"], s["train_seconds"]
        span = f"{a['min'] * 100:.2f}-{a['max']:.2%}"
        t.add_row(
            s["model"],
            f"{model_info(s['model']).params:,}",
            mean_std(a),
            interval(a),
            span,
            f"{ts['mean']:.1f}",
        )
    out.print(t)
    t = Table(
        title="is the difference real? (significant: p < 0.05 on every test)",
        caption="McNemar: the same test images, worst of the seeds. Welch: the per-seed accuracies.",
    )
    for col in ("pair", "difference", "McNemar p", "Welch p", "significant"):
        t.add_column(col, justify="left" if col == "pair" else "right")
    for p in pairs:
        worst = max(m["p_value"] for m in p["mcnemar"])
        welch_p = _p(p["welch"]["p_value"]) if p["welch"] else "needs 2+ seeds"
        yes = "[bold green]yes[/]" if p["significant"] else "[yellow]no[/]"
        t.add_row(f"{p['a']} vs {p['b']}", f"{p['difference'] * 100:+.2f} points", _p(worst), welch_p, yes)
    out.print(t)
    for p in pairs:
        out.print(f"- {p['words']}", highlight=False)
