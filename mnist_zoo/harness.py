"""The evaluation harness on the command line: cv, evaluate --seeds, compare and predict.

    python -m mnist_zoo cv lenet --folds 5                  # stratified 5-fold cv on the 60k training images
    python -m mnist_zoo evaluate lenet --seeds 5            # retrain with 5 seeds: mean ± std, 95% interval
    python -m mnist_zoo compare mlp dnn lenet --seeds 3     # side by side, and which differences are real
    python -m mnist_zoo predict lenet digit.png photo.jpg   # the digit and its probability, per file

Numbers go to stdout (with --json: exactly one JSON object); progress to stderr. JSON records and PNG pictures
go to the report folder (--report-dir, else $MNIST_ZOO_REPORTS, else ./reports). Every finished training run
is kept in <report dir>/runs/ and reused when the same command runs again (--fresh retrains), so Ctrl-C loses
only the run in progress.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.table import Table

from mnist_zoo import compare, crossval, plots, predict
from mnist_zoo.cli import _common
from mnist_zoo.compare import cmd_compare, evaluate_seeds
from mnist_zoo.crossval import DEFAULT_FOLDS, cross_validate, write_json
from mnist_zoo.models import list_models, model_info
from mnist_zoo.reporting import (
    SEED_ONLY,
    draw_plots,
    err,
    interval,
    mean_std,
    note_reused,
    out,
    print_files,
    progress_enabled,
    setup,
    study_args,
    training_data,
)
from mnist_zoo.runs import RunStore, report_dir
from mnist_zoo.seeds import DEFAULT_COMPARE_SEEDS
from mnist_zoo.train import recipe_for
from mnist_zoo.util import UserError, environment

__all__ = ["register", "evaluate_seeds", "cmd_cv", "cmd_compare", "cmd_predict"]
FMT = argparse.RawDescriptionHelpFormatter


def register(subparsers) -> None:
    """Add cv, compare and predict to the CLI, and the training options of `evaluate --seeds` to evaluate."""
    p = subparsers.add_parser(
        "cv",
        help="stratified k-fold cross-validation on the training set",
        description=crossval.__doc__,
        formatter_class=FMT,
        epilog="example: python -m mnist_zoo cv lenet --folds 5",
    )
    p.add_argument("model", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help=f"k (default: {DEFAULT_FOLDS})")
    _common(p)
    study_args(p)
    p.set_defaults(func=cmd_cv)

    p = subparsers.add_parser(
        "compare",
        help="models side by side over seeds, with significance tests",
        description=compare.__doc__,
        formatter_class=FMT,
        epilog="example: python -m mnist_zoo compare mlp dnn lenet --seeds 5",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="two or more models (default: the whole zoo)")
    seeds_help = f"training runs per model (default: {DEFAULT_COMPARE_SEEDS})"
    p.add_argument("--seeds", type=int, default=DEFAULT_COMPARE_SEEDS, help=seeds_help)
    _common(p)
    study_args(p)
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "predict",
        help="the digit in each image file, with its probability",
        description=predict.__doc__,
        formatter_class=FMT,
        epilog="example: python -m mnist_zoo predict lenet seven.png photo.jpg",
    )
    p.add_argument(
        "model", help="a zoo model (its checkpoint, trained first if missing) or a checkpoint path"
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, ...: any size, colour or grey")
    _common(p)
    p.add_argument(
        "--save-prepared", action="store_true", help="also draw the 28x28 inputs the model was given"
    )
    p.add_argument(
        "--report-dir", help="where --save-prepared writes (default: $MNIST_ZOO_REPORTS or reports/)"
    )
    p.set_defaults(func=cmd_predict)

    # `evaluate` belongs to cli.py; with --seeds it retrains, so it takes the training options too.
    evaluate = subparsers.choices.get("evaluate")
    if evaluate is not None:
        study_args(evaluate, evaluate=True)
        evaluate.set_defaults(func=_guard_evaluate(evaluate.get_default("func")))


def _guard_evaluate(plain):
    def guarded(args: argparse.Namespace) -> int:
        given = [f"--{k.replace('_', '-')}" for k in SEED_ONLY if getattr(args, k, None) is not None]
        if args.seeds is None and given:
            raise UserError(
                f"{', '.join(given)} only apply with --seeds N (retraining); plain evaluate scores the saved "
                "checkpoint"
            )
        return plain(args)

    return guarded


def cmd_cv(args: argparse.Namespace) -> int:
    model_info(args.model)
    recipe = recipe_for(args.model, args.recipe, epochs=args.epochs)
    device = setup(args)
    split, subset = training_data(args)
    folder = report_dir(args.report_dir)
    summary_path = folder / f"cv-{args.model}.json"
    store = RunStore(folder, fresh=args.fresh)
    try:
        summary = cross_validate(
            args.model, recipe, split, folds=args.folds, seed=args.seed, device=device, store=store,
            summary_path=summary_path, subset=subset, progress=progress_enabled(args),
        )  # fmt: skip
    except KeyboardInterrupt:
        if summary_path.is_file():
            done = json.loads(summary_path.read_text()).get("folds_done", 0)
            err.print(f"{done} finished fold(s) saved in {summary_path}; the same command again resumes")
        raise
    note_reused(store)
    summary["report"] = str(summary_path)
    stem, folds = folder / f"cv-{args.model}", summary["fold_results"]

    def draw() -> dict:
        curves = [(f"fold {r['fold']}", r["history"]) for r in folds]
        title = f"{args.model}: {args.folds}-fold cross-validation, {recipe.epochs} epoch(s) per fold"
        scores = {args.model: [r["accuracy"] for r in folds]}
        box_title = f"{args.model}: held-out accuracy of each of {args.folds} folds"
        return {
            "curves": plots.learning_curves(curves, f"{stem}-curves.png", title, heldout="held-out fold"),
            "scores": plots.score_boxplot(scores, f"{stem}-scores.png", box_title, "held-out fold"),
        }

    draw_plots(args, summary, draw)
    write_json(summary_path, summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    t = Table(
        title=f"{args.model}: stratified {args.folds}-fold cross-validation on {len(split):,} training images"
    )
    for col in ("fold", "train images", "held-out", "held-out accuracy", "held-out loss", "train s"):
        t.add_column(col, justify="right")
    for r in folds:
        saved = " (saved)" if r["reused"] else ""
        cells = (
            f"{r['train_images']:,}",
            f"{r['heldout_images']:,}",
            f"{r['accuracy']:.2%}",
            f"{r['loss']:.4f}",
        )
        t.add_row(str(r["fold"]), *cells, f"{r['train_seconds']:.1f}{saved}")
    out.print(t)
    s = summary["accuracy"]
    out.print(
        f"[bold]{args.model}[/]: held-out accuracy [bold]{mean_std(s)}[/] (mean ± std over {s['n']} folds); "
        f"95% interval of the mean: {interval(s)}. Recipe {recipe.name}, {recipe.epochs} epoch(s), seed "
        f"{args.seed}; wall time {summary['wall_seconds']:.0f} s"
    )
    print_files(summary)
    return 0


def _model_for_prediction(args: argparse.Namespace):
    from mnist_zoo.checkpoint import checkpoint_path, load_checkpoint
    from mnist_zoo.train import ensure_trained

    if args.model in list_models():  # its checkpoint, trained first with the default recipe if missing
        model, meta = ensure_trained(args.model, data_dir=args.data_dir, progress=not args.json)
    else:
        model, meta = load_checkpoint(args.model)
    return model, meta, str(checkpoint_path(args.model))


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 0 when every file was answered, 1 when any file could not be read (the rest still are)."""
    device = setup(args)
    model, meta, path = _model_for_prediction(args)
    results, prepared = predict.predict_files(model.to(device), args.files)
    record = {
        "schema": "mnist-zoo/predict/1",
        "command": "predict",
        "model": meta["model"],
        "checkpoint": path,
    }
    record.update(results=results, **environment(device))
    good = [(r, p) for r, p in zip(results, prepared, strict=True) if p is not None]
    if args.save_prepared and good:
        name = report_dir(args.report_dir) / f"predict-{meta['model']}-inputs.png"
        captions = [
            f"{r['file'].rsplit('/', 1)[-1][:14]}\n{r['digit']} ({r['probability']:.0%})" for r, _ in good
        ]
        title = f"what {meta['model']} was given: 28x28, MNIST-style (file, digit, probability)"
        images = [p.image for _, p in good]
        draw_plots(args, record, lambda: {"inputs": plots.digit_grid(images, captions, name, title)})
    if args.json:
        print(json.dumps(record))
    else:
        for r in results:
            if r["ok"]:
                unsure = "  (unsure)" if r["probability"] < 0.5 else ""
                out.print(
                    f"{r['file']}: [bold]{r['digit']}[/] ({r['probability']:.1%}){unsure}", highlight=False
                )
            else:
                print(f"error: {r['file']}: {r['error']}", file=sys.stderr)  # one line, never wrapped
        print_files(record)
    return 0 if len(good) == len(results) else 1
