"""The commands that train many runs: cv, evaluate --seeds, compare, sweep.

    python -m mnist_zoo cv lenet --folds 5          # stratified k-fold cross-validation on the training set
    python -m mnist_zoo evaluate lenet --seeds 5    # retrain with 5 seeds: mean ± std and a 95% interval
    python -m mnist_zoo compare mlp dnn lenet       # side by side over seeds, and which differences are real
    python -m mnist_zoo sweep lenet --grid lr=0.1,0.15 --folds 2

They write JSON records and PNG pictures to the report folder (--report-dir, else $MNIST_ZOO_REPORTS, else
./reports) and keep every finished training run there (runs.py): the same command again reuses them (--fresh
retrains), so Ctrl-C loses only the run in progress. With --ray, the runs left to train are Ray tasks
(cluster.py); a sweep always runs on Ray Tune (sweep.py).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import replace
from pathlib import Path

from rich.table import Table

from mnist_zoo import cluster, compare, crossval, data, plots, sweep
from mnist_zoo.models import list_models, model_info
from mnist_zoo.output import draw, interval, mean_std, print_files, printed_json
from mnist_zoo.progress import Progress
from mnist_zoo.recipes import Recipe, recipe_for, steps_for, write_recipe_file
from mnist_zoo.runs import Executor, RunStore, Sequential, report_dir, run_jobs, stratified_subset
from mnist_zoo.schema import read_json
from mnist_zoo.settings import Settings
from mnist_zoo.util import UserError, check_output_dir, environment, err, out


def _reports(path: str | None) -> Path:
    """The report folder, checked writable before any training (the runs are saved there as they finish)."""
    folder = report_dir(path)
    what = f"--report-dir {folder}" if path else f"report folder {folder}"
    return check_output_dir(folder, what, parents=True)


def _training_data(data_dir: str | None, train_size: int | None) -> tuple[data.Split, dict | None]:
    """The 60k training images, or the stratified --train-size subset of them (and how it was drawn)."""
    split = data.load("train", data_dir)
    if train_size is None or train_size == len(split):
        return split, None
    subset = stratified_subset(split.labels, train_size)
    return split.subset(subset), {"size": train_size, "stratified": True}


def _executor(settings: Settings) -> Executor:
    """Where the runs left to train go: Ray tasks with --ray, else one after another here."""
    if settings.ray is not None:
        return cluster.RayExecutor(settings.address, settings.device, settings.threads)
    return Sequential(settings.device, settings.threads)


def _note_reused(store: RunStore) -> None:
    if store.reused:
        err.print(f"reused {store.reused} saved run(s) from {store.directory} (--fresh retrains them)")


def cmd_cv(args: argparse.Namespace) -> int:
    recipe = recipe_for(args.model, args.recipe, epochs=args.epochs, precision=args.precision)
    folder = _reports(args.report_dir)
    split, subset = _training_data(args.data_dir, args.train_size)
    crossval.stratified_folds(split.labels, args.folds)  # a bad --folds is one line, before any note
    settings = Settings.resolve(args)
    summary_path, stem = folder / f"cv-{args.model}.json", folder / f"cv-{args.model}"
    store = RunStore(folder, device=settings.device, threads=settings.threads, fresh=args.fresh)
    try:
        summary = crossval.cross_validate(
            args.model,
            recipe,
            split,
            folds=args.folds,
            seed=args.seed,
            store=store,
            executor=_executor(settings),
            summary_path=summary_path,
            progress=settings.progress,
            subset=subset,
        )
    except KeyboardInterrupt:
        summary = {
            "type": "object",
            "required": ["folds_done"],
            "properties": {"folds_done": {"type": "integer"}},
        }
        with contextlib.suppress(UserError):  # no summary yet, or not ours: nothing to say
            done = read_json(summary_path, summary)["folds_done"]
            err.print(f"{done} finished fold(s) saved in {summary_path}; the same command again resumes")
        raise
    _note_reused(store)
    summary["report"], folds = str(summary_path), summary["fold_results"]

    def pictures() -> dict[str, Path]:
        curves = [(f"fold {r['fold']}", r["history"]) for r in folds]
        title = f"{args.model}: {args.folds}-fold cross-validation, {recipe.epochs} epoch(s) per fold"
        scores = {args.model: [r["accuracy"] for r in folds]}
        box_title = f"{args.model}: held-out accuracy of each of {args.folds} folds"
        return {
            "curves": plots.learning_curves(curves, f"{stem}-curves.png", title, heldout="held-out fold"),
            "scores": plots.score_boxplot(scores, f"{stem}-scores.png", box_title, "held-out fold"),
        }

    draw(summary, pictures, skip=args.no_plots)
    if printed_json(summary, settings.json, summary_path):
        return 0
    t = Table(
        title=f"{args.model}: stratified {args.folds}-fold cross-validation on {len(split):,} training images"
    )
    for col in ("fold", "train images", "held-out", "held-out accuracy", "held-out loss", "train s"):
        t.add_column(col, justify="right")
    for r in folds:
        seconds = f"{r['train_seconds']:.1f}" + (" (saved)" if r["reused"] else "")
        images = f"{r['train_images']:,}", f"{r['heldout_images']:,}"
        t.add_row(str(r["fold"]), *images, f"{r['accuracy']:.2%}", f"{r['loss']:.4f}", seconds)
    out.print(t)
    s = summary["accuracy"]
    how = f"recipe {recipe.name}, {recipe.epochs} epoch(s), seed {args.seed}"
    out.print(
        f"[bold]{args.model}[/]: held-out accuracy [bold]{mean_std(s)}[/] (mean ± std over {s['n']} folds)"
    )
    out.print(f"95% interval of the mean: {interval(s)}; {how}; wall time {summary['wall_seconds']:.0f} s")
    print_files(summary)
    return 0


def _seed_studies(
    args: argparse.Namespace, models: list[str], n_seeds: int
) -> tuple[list[dict], list, data.Split, Settings]:
    """Train (or reuse) n_seeds runs of every model under one progress bar (evaluate --seeds, compare); returns
    each model's study and test-set predictions, the test split and the settings."""
    if not 1 <= n_seeds <= compare.MAX_SEEDS:
        raise UserError(f"--seeds must be between 1 and {compare.MAX_SEEDS}, got {n_seeds}")
    recipes: dict[str, Recipe] = {
        m: recipe_for(m, args.recipe or "default", epochs=args.epochs, precision=args.precision)
        for m in models
    }
    first = args.seed or 0
    seeds = list(range(first, first + n_seeds))
    folder = _reports(args.report_dir)
    train, subset = _training_data(args.data_dir, args.train_size)
    test = data.load("test", args.data_dir)
    settings = Settings.resolve(args)
    store = RunStore(folder, device=settings.device, threads=settings.threads, fresh=bool(args.fresh))
    jobs = {m: compare.seed_jobs(m, recipes[m], seeds, subset) for m in models}
    everything = [j for m in models for j in jobs[m]]  # one list: with --ray, every model's seeds at once
    total = sum(steps_for(len(train), recipes[m]) * n_seeds for m in models)
    try:
        with Progress("train", total, settings.progress) as bar:
            splits = {"train": train, "test": test}
            records = run_jobs(everything, splits, store, _executor(settings), progress=bar)
    except KeyboardInterrupt:
        err.print(
            f"{store.saved} run(s) finished and saved in {store.directory}; the same command again reuses them"
        )
        raise
    studies, predictions = [], []
    for i, m in enumerate(models):
        mine = records[i * n_seeds : (i + 1) * n_seeds]
        study, preds = compare.seed_study(jobs[m], mine, len(train), len(test), subset)
        studies.append(study)
        predictions.append(preds)
    _note_reused(store)
    return studies, predictions, test, settings


def cmd_evaluate_seeds(args: argparse.Namespace) -> int:
    """`evaluate MODEL --seeds N`: retrain MODEL with N seeds; test accuracy mean ± std and a 95% interval."""
    if args.model not in list_models():
        zoo = ", ".join(list_models())
        raise UserError(
            f"--seeds retrains from scratch, so MODEL must be a zoo model ({zoo}), not {args.model!r}"
        )
    start = time.perf_counter()
    studies, predictions, test, settings = _seed_studies(args, [args.model], args.seeds)
    study = studies[0]
    stem = report_dir(args.report_dir) / f"seeds-{args.model}"
    record = {"schema": compare.SEEDS_SCHEMA, "command": "evaluate", **study, "report": f"{stem}.json"}
    draw(
        record, lambda: plots.seed_pictures(study, predictions[0], test, str(stem)), skip=bool(args.no_plots)
    )
    record.update(wall_seconds=time.perf_counter() - start, **environment(settings.device, settings.threads))
    if printed_json(record, settings.json, stem.with_suffix(".json")):
        return 0
    title = f"{args.model}: {len(study['runs'])} seed(s), each trained on {study['train_images']:,} images"
    t = Table(title=f"{title} and scored on {study['test_images']:,} test images")
    for col in ("seed", "test accuracy", "test loss", "train s", "images/s"):
        t.add_column(col, justify="right")
    for r in study["runs"]:
        seconds = f"{r['train_seconds']:.1f}" + (" (saved)" if r["reused"] else "")
        scores = f"{r['accuracy']:.2%}", f"{r['loss']:.4f}"
        t.add_row(str(r["seed"]), *scores, seconds, f"{r['images_per_second']:,.0f}")
    out.print(t)
    s = study["accuracy"]
    out.print(
        f"[bold]{args.model}[/]: test accuracy [bold]{mean_std(s)}[/] (mean ± std over {s['n']} seed(s))"
    )
    out.print(f"95% interval of the mean: {interval(s)}")
    print_files(record)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    models = args.models or list_models()
    for m in models:
        model_info(m)
    if len(set(models)) != len(models) or len(models) < 2:
        raise UserError("compare needs two or more different models, e.g. compare mlp dnn lenet")
    start = time.perf_counter()
    studies, predictions, test, settings = _seed_studies(args, models, args.seeds)
    pairs = compare.compare_pairs(studies, predictions, test.labels)
    folder = report_dir(args.report_dir)
    stem = folder / f"compare-{'-'.join(models)}"
    record = {"schema": compare.COMPARE_SCHEMA, "command": "compare", "models": studies, "pairs": pairs}
    record["report"] = f"{stem}.json"

    def pictures() -> dict[str, Path]:
        scores = {s["model"]: [r["accuracy"] for r in s["runs"]] for s in studies}
        title = f"test accuracy, {args.seeds} seed(s) per model"
        paths = {"scores": plots.score_boxplot(scores, f"{stem}-scores.png", title, "test set")}
        for s, p in zip(studies, predictions, strict=True):
            for name, path in plots.seed_pictures(s, p, test, str(folder / f"seeds-{s['model']}")).items():
                paths[f"{s['model']} {name}"] = path
        return paths

    draw(record, pictures, skip=args.no_plots)
    record.update(wall_seconds=time.perf_counter() - start, **environment(settings.device, settings.threads))
    if printed_json(record, settings.json, stem.with_suffix(".json")):
        return 0
    t = Table(
        title=f"{len(studies)} models, {args.seeds} seed(s) each, scored on the same {len(test):,} test images"
    )
    for col in ("model", "params", "accuracy (mean ± std)", "95% CI", "range", "train s"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for s in studies:
        a, span = s["accuracy"], f"{s['accuracy']['min'] * 100:.2f}-{s['accuracy']['max']:.2%}"
        params, seconds = f"{model_info(s['model']).params:,}", f"{s['train_seconds']['mean']:.1f}"
        t.add_row(s["model"], params, mean_std(a), interval(a), span, seconds)
    out.print(t)
    caption = "McNemar: the same test images, worst of the seeds. Welch: the per-seed accuracies."
    t = Table(title="is the difference real? (significant: p < 0.05 on every test)", caption=caption)
    for col in ("pair", "difference", "McNemar p", "Welch p", "significant"):
        t.add_column(col, justify="left" if col == "pair" else "right")
    for p in pairs:
        worst = _p(max(m["p_value"] for m in p["mcnemar"]))
        welch_p = _p(p["welch"]["p_value"]) if p["welch"] else "needs 2+ seeds"
        yes = "[bold green]yes[/]" if p["significant"] else "[yellow]no[/]"
        t.add_row(f"{p['a']} vs {p['b']}", f"{p['difference'] * 100:+.2f} points", worst, welch_p, yes)
    out.print(t)
    for p in pairs:
        out.print(f"- {p['words']}", highlight=False)
    print_files(record)
    return 0


def _p(p: float | None) -> str:
    return compare.format_p(p).removeprefix("p ").removeprefix("= ")


def cmd_sweep(args: argparse.Namespace, prog: str) -> int:
    cluster.import_ray("sweep")  # first: without Ray, nothing of a sweep can run
    base = recipe_for(args.model, args.recipe, epochs=args.epochs, precision=args.precision)
    grid = sweep.parse_grid(args.grid)
    sweep.configurations(base, grid)  # every combination checked before any work
    if not 1 <= args.seeds <= compare.MAX_SEEDS:
        raise UserError(f"--seeds must be between 1 and {compare.MAX_SEEDS}, got {args.seeds}")
    runs_per_config = args.seeds * (args.folds or 1)
    trials = sweep.check_trials(grid, runs_per_config)
    folder = _reports(args.report_dir)
    best_path = Path(args.out) if args.out else folder / f"sweep-{args.model}-best.json"
    check_output_dir(best_path.parent, f"--out {best_path}", parents=True)
    split, subset = _training_data(args.data_dir, args.train_size)
    crossval.stratified_folds(split.labels, sweep.VALIDATION_FOLDS if args.folds is None else args.folds)
    if args.scheduler == "asha" and runs_per_config > 1:
        raise UserError(
            f"--scheduler asha stops single trials, and each of the {runs_per_config} folds or seeds of a "
            "configuration is one: it would rank configurations on whichever folds survived; use fifo"
        )
    scheduler = args.scheduler or ("asha" if runs_per_config == 1 else "fifo")
    settings = Settings.resolve(args, ray=args.ray or cluster.LOCAL)  # a sweep always runs on Ray
    err.print(
        f"sweep {args.model}: {trials} trial(s) on Ray, {settings.threads} thread(s) each, scheduler {scheduler}"
    )
    start = time.perf_counter()
    record = sweep.run(
        args.model,
        base,
        grid,
        split,
        seeds=list(range(args.seed, args.seed + args.seeds)),
        folds=args.folds,
        scheduler=scheduler,
        address=settings.address,
        threads=settings.threads,
        device=settings.device,
        storage=folder / "tune",
    )
    record.update(subset=subset, wall_seconds=time.perf_counter() - start)
    record.update(environment(settings.device, settings.threads))
    top = record["configurations"][0]
    if top["finished"]:
        provenance = {"sweep": str(folder / f"sweep-{args.model}.json"), "grid": top["grid"]}
        provenance["heldout_accuracy"] = top["accuracy"]
        write_recipe_file(best_path, args.model, replace(base, name="sweep", **top["grid"]), provenance)
        record["best_recipe_file"] = str(best_path)
    if printed_json(record, settings.json, folder / f"sweep-{args.model}.json"):
        return 0
    t = Table(
        title=f"{args.model}: {len(record['configurations'])} configurations, ranked by held-out accuracy"
    )
    for col in ("rank", *grid, "held-out accuracy (mean ± std)", "range", "runs finished", "stopped early"):
        t.add_column(col, justify="right")
    for rank, c in enumerate(record["configurations"], 1):
        a = c["accuracy"]
        span = f"{a['min'] * 100:.2f}-{a['max']:.2%}" if a else "-"
        stopped = ", ".join(f"epoch {e}" for e in c["stopped_at"]) + (
            f" {c['errors']} failed" if c["errors"] else ""
        )
        cells = [str(c["grid"][k]) for k in grid]
        t.add_row(
            str(rank), *cells, mean_std(a) if a else "-", span, f"{c['finished']}/{c['runs']}", stopped or "-"
        )
    out.print(t)
    held = record["heldout"]
    out.print(
        f"held-out: {held}; {record['concurrent']} trial(s) at once on {record['cpus']:g} CPU(s); "
        f"wall time {record['wall_seconds']:.0f} s",
        highlight=False,
    )
    if "best_recipe_file" in record:
        out.print(f"best recipe: {best_path}", highlight=False)
        again = f"{prog} train {args.model} --recipe-file {best_path}"
        out.print(f"train it on all 60,000 images: {again}", highlight=False)
    else:
        out.print("no configuration finished every run: no recipe file written")
    out.print(f"  results          {folder / f'sweep-{args.model}.json'}", highlight=False)
    return 0
