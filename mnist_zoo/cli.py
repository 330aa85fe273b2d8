"""The command line: python -m mnist_zoo {all,train,evaluate,list,cv,compare,predict,data}.

examples:
    python -m mnist_zoo all                         # train the zoo, evaluate it on the test set, print the table
    python -m mnist_zoo train lenet --epochs 3 --json
    python -m mnist_zoo evaluate lenet              # accuracy, per class, confusion matrix, robustness
    python -m mnist_zoo evaluate lenet --seeds 5    # retrain with 5 seeds: mean ± std and a 95% interval
    python -m mnist_zoo compare mlp dnn lenet       # side by side over seeds, and which differences are real
    python -m mnist_zoo cv lenet --folds 5          # stratified k-fold cross-validation on the training set
    python -m mnist_zoo predict lenet seven.png     # the digit in an image file, with its probability
    python -m mnist_zoo list                        # the zoo: params, multiply-adds, trained? accuracy
    python -m mnist_zoo data                        # find, verify and summarise MNIST

Results go to stdout (with --json: exactly one JSON object); progress bars, notes and errors go to stderr.
Trained models are exported by `python -m export` and benchmarked by `pytest --benchmark-only`.
Studies (cv, evaluate --seeds, compare) write JSON records and PNG pictures to the report folder (--report-dir,
else $MNIST_ZOO_REPORTS, else ./reports) and keep every finished training run there: the same command again
reuses them (--fresh retrains), so Ctrl-C loses only the run in progress.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from rich.table import Table

from mnist_zoo import cluster, compare, crossval, data, distributed, plots, predict, sweep
from mnist_zoo.augment import robustness
from mnist_zoo.checkpoint import (
    check_target,
    checkpoint_dir,
    checkpoint_path,
    load_checkpoint,
    read_checkpoint,
)
from mnist_zoo.cpu import set_threads
from mnist_zoo.models import list_models, model_info
from mnist_zoo.runs import RunStore, report_dir, stratified_subset
from mnist_zoo.targets import CONTENDED
from mnist_zoo.train import (
    RECIPES,
    Progress,
    confusion_matrix,
    ensure_trained,
    evaluate,
    fit,
    recipe_for,
    steps_for,
)
from mnist_zoo.util import (
    UserError,
    check_output_dir,
    environment,
    err,
    guarded,
    out,
    resolve_device,
    write_json,
)

PROG = "mnist-zoo" if Path(sys.argv[0]).name == "mnist-zoo" else "python -m mnist_zoo"
# Options that `evaluate` honours only with --seeds (without it, evaluate scores the saved checkpoint).
DATA_HELP = "MNIST directory (default: $MNIST_ZOO_DATA, then cache, download, npm)"
SEED_ONLY = (
    "recipe",
    "epochs",
    "seed",
    "train_size",
    "report_dir",
    "no_plots",
    "no_progress",
    "fresh",
    "ray",
)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str, doc: str | None = None) -> argparse.ArgumentParser:
        epilog = f"example: {PROG} {name} {example}"
        return sub.add_parser(name, help=help, description=doc or help, epilog=epilog, formatter_class=fmt)

    model_help = f"one of: {', '.join(list_models())}"
    p = command("all", "train every model, evaluate it on the test set, print the results", "--seed 0")
    _common(p)
    _training(p)

    p = command("train", "train one model, evaluate it on the 10k test images", "lenet --epochs 3 --json")
    p.add_argument("model", help=model_help)
    _common(p)
    _training(p)
    p.add_argument("--checkpoint", help="where to save (default: the checkpoint directory, <model>.pt)")
    p.add_argument("--recipe-file", metavar="FILE", help="the recipe in FILE (JSON, as `sweep` writes it)")

    p = command(
        "evaluate",
        "test accuracy, per class, confusion matrix, robustness to perturbations",
        "lenet --seeds 5",
    )
    p.add_argument("model", help="a zoo model name (its saved checkpoint) or a checkpoint path")
    _common(p)
    p.add_argument("--seeds", type=int, help="retrain with N seeds: mean, std and a 95%% interval")
    _training(p, study=True, evaluate=True)

    p = command("list", "the zoo as a table", "--json")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = command("cv", "stratified k-fold cross-validation", "lenet --folds 5", crossval.__doc__)
    p.add_argument("model", help=model_help)
    p.add_argument("--folds", type=int, default=crossval.DEFAULT_FOLDS, help="k (default: %(default)s)")
    _common(p)
    _training(p, study=True)

    p = command("compare", "models side by side over seeds", "mlp dnn lenet --seeds 5", compare.__doc__)
    p.add_argument("models", nargs="*", metavar="MODEL", help="two or more models (default: the whole zoo)")
    seeds = compare.DEFAULT_COMPARE_SEEDS
    p.add_argument("--seeds", type=int, default=seeds, help="training runs per model (default: %(default)s)")
    _common(p)
    _training(p, study=True)

    _sweep_parser(command, model_help)

    p = command("predict", "the digit in image files", "lenet seven.png photo.jpg", predict.__doc__)
    p.add_argument(
        "model", help="a zoo model (its checkpoint, trained first if missing) or a checkpoint path"
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, ...: any size, colour or grey")
    _common(p)
    p.add_argument("--save-prepared", action="store_true", help="also draw the 28x28 inputs the model got")
    p.add_argument(
        "--report-dir", help="where --save-prepared writes (default: $MNIST_ZOO_REPORTS, reports/)"
    )

    p = command("data", "find, verify and summarise MNIST", "--data-dir ../shared/data/mnist", data.__doc__)
    p.add_argument("--data-dir", help=DATA_HELP)
    return parser


def _sweep_parser(command: Callable[..., argparse.ArgumentParser], model_help: str) -> None:
    example = "lenet --grid lr=0.1,0.15 --folds 2 --ray"
    p = command(
        "sweep", "hyperparameter search on Ray Tune, scored on held-out images", example, sweep.__doc__
    )
    p.add_argument("model", help=model_help)
    keys = ", ".join(sweep.GRID_KEYS)
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2", help=f"KEY one of {keys}")
    p.add_argument("--seeds", type=int, default=1, help="runs per configuration and fold (default: 1)")
    p.add_argument("--folds", type=int, help="score on K cv folds (default: a 10,000-image validation split)")
    p.add_argument(
        "--scheduler",
        choices=sweep.SCHEDULERS,
        help="asha stops poor trials early (default with one run per configuration), fifo runs all (default "
        "with --folds or --seeds: asha would compare single folds, not configurations)",
    )
    p.add_argument(
        "--out", metavar="FILE", help="the best recipe (default: <report dir>/sweep-MODEL-best.json)"
    )
    _common(p)
    _training(p, study=True, sweeping=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help=DATA_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto = cuda when present)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: one per idle CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _training(
    p: argparse.ArgumentParser, study: bool = False, evaluate: bool = False, sweeping: bool = False
) -> None:
    """The options of every command that trains. On `evaluate` they default to None, so that using one without
    --seeds is caught rather than silently ignored, and their help says so."""
    group = p.add_argument_group("training (with --seeds only)") if evaluate else p

    def add(*flags: str, default=None, **kwargs) -> None:
        group.add_argument(*flags, default=None if evaluate else default, **kwargs)

    add("--recipe", choices=RECIPES, default="default", help="training recipe (default: default)")
    add("--epochs", type=int, help="override the recipe's epochs (fewer: faster, less accurate)")
    add("--seed", type=int, default=0, help=f"{'first ' if study else ''}random seed (default: 0)")
    add("--no-progress", action="store_true", default=False, help="no progress bar")
    if not study:
        add("--batch-size", type=int, help="override the recipe's batch size")
        add("--lr", type=float, help="override the recipe's peak learning rate")
        streams = "slices of each batch trained at once on a CPU, each on its own thread (default: one per"
        add("--streams", type=int, help=f"{streams} thread while a slice keeps 128 images; 1 = plain steps)")
        replace = "save even when this run is less accurate than the checkpoint it replaces (default: keep"
        add("--replace", action="store_true", default=False, help=f"{replace} the more accurate one)")
        return
    add("--train-size", type=int, metavar="N", help="train on a stratified subset of N training images")
    add("--report-dir", help="JSON and pictures go here (default: $MNIST_ZOO_REPORTS or reports/)")
    if not sweeping:  # a sweep keeps Tune's results, not saved runs, and draws nothing
        add("--no-plots", action="store_true", default=False, help="numbers only, no pictures")
        add("--fresh", action="store_true", default=False, help="retrain instead of reusing saved runs")
    _ray_option(group, "each trial" if sweeping else "each run")


def _ray_option(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "each run") -> None:
    ray = f"{what} a Ray task on --threads CPUs (default with --ray: {cluster.DEFAULT_THREADS}): no ADDRESS starts a"
    ray += " local Ray on this machine's CPUs; auto or ray://host:10001 uses a cluster (needs mnist-zoo[ray])"
    p.add_argument("--ray", nargs="?", const=cluster.LOCAL, metavar="ADDRESS", help=ray)


def _setup(args: argparse.Namespace) -> torch.device:
    """The device, then the threads (which may print a note on a busy machine): call it once the input is checked,
    so that bad input is one line, before any note."""
    device = resolve_device(args.device)
    threads = args.threads
    if getattr(args, "ray", None) is not None:
        cluster.import_ray()  # checked now, so that a missing Ray is one line before any work
        threads = cluster.DEFAULT_THREADS if threads is None else threads
    set_threads(threads)
    return device


def _address(ray: str) -> str | None:
    return None if ray == cluster.LOCAL else ray


def _store(args: argparse.Namespace, folder: Path) -> RunStore:
    """The runs store of a study; with --ray, its runs are Ray tasks (threads and device as _setup set them)."""
    executor = None
    if args.ray is not None:
        executor = cluster.RayExecutor(
            _address(args.ray), torch.get_num_threads(), resolve_device(args.device)
        )
    return RunStore(folder, fresh=bool(args.fresh), executor=executor)


def _progress(args: argparse.Namespace) -> bool:
    return not (args.no_progress or args.json)


def _printed_json(args: argparse.Namespace, record: dict, path: Path | None = None) -> bool:
    """Write `record` to `path` (atomically) when given; with --json, print it as the one stdout object."""
    if path is not None:
        write_json(path, record)
    if args.json:
        print(json.dumps(record))  # not through rich: JSON must not be wrapped or highlighted
    return args.json


# --- all, train, evaluate, list, data -------------------------------------------------------------------------


def _fit_all(names: list[str], args: argparse.Namespace, checkpoint: str | None = None) -> list[dict]:
    """Train and save `names`, after checking every input and output path: bad input never costs a training."""
    overrides = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    recipes = {n: recipe_for(n, args.recipe, **overrides) for n in names}
    if getattr(args, "recipe_file", None):  # sweep's winner, with any --epochs, --batch-size, --lr on top
        if args.recipe != "default":
            raise UserError("--recipe-file replaces --recipe: give one of them")
        given = {k: v for k, v in overrides.items() if v is not None}
        recipes = {n: replace(sweep.read_recipe_file(args.recipe_file, n), **given) for n in names}
    if args.streams is not None and args.streams < 1:
        raise UserError(f"--streams must be at least 1, got {args.streams}")
    for name in names:
        check_target(checkpoint or checkpoint_path(name), name, explicit=checkpoint is not None)
    if distributed.launched():  # under torchrun: data-parallel, each rank on its share of this machine's CPUs
        if args.command != "train" or args.streams not in (None, 1):
            raise UserError("under torchrun, run `train MODEL` without --streams (each rank trains a shard)")
        args.threads = distributed.default_threads() if args.threads is None else args.threads
    train_split, test_split = data.load("train", args.data_dir), data.load("test", args.data_dir)
    device = _setup(args)
    options = dict(seed=args.seed, device=device, checkpoint=checkpoint)
    options.update(progress=_progress(args), overwrite=args.replace)
    if distributed.launched():
        return [distributed.fit(names[0], recipes[names[0]], train_split, test_split, **options)]
    return [
        fit(name, recipes[name], train_split, test_split, streams=args.streams, **options) for name in names
    ]


def _results_table(records: list[dict]) -> Table:
    r = records[0]
    slices = f", {r['streams']} batch slices at once" if r.get("streams", 1) > 1 else ""
    if "world_size" in r:  # torchrun: data-parallel processes
        slices = f" per process, {r['world_size']} processes ({r['backend']})"
    title = f"{r['device_name']} ({r['device']}), {r['threads']} threads{slices}, torch {r['torch_version']}"
    t = Table(title=f"{title}, seed {r['seed']}")
    for col in ("model", "recipe", "epochs", "test accuracy", "train s", "images/s"):
        t.add_column(col, justify="left" if col in ("model", "recipe") else "right")
    for r in records:
        speed = (f"{r['train_seconds']:.1f}", f"{r['images_per_second']:,.0f}")
        t.add_row(r["model"], r["recipe"], str(r["epochs"]), f"{r['test_accuracy']:.2%}", *speed)
    contended = [f"{r['model']} {r['contention']:.0%}" for r in records if r["contention"] > CONTENDED]
    if contended:
        t.caption = (
            f"[yellow]contended[/]: other processes took {', '.join(contended)} of the CPUs' time while "
        )
        t.caption += "training: these times are not this machine's speed"
    return t


def cmd_all(args: argparse.Namespace) -> int:
    records = _fit_all(list_models(), args)
    if _printed_json(args, {"results": records}):
        return 0
    out.print(_results_table(records))
    out.print(f"checkpoints in {checkpoint_dir()}", highlight=False)
    out.print("next: [bold]python -m export all[/] exports and verifies them")
    out.print("      [bold]pytest --benchmark-only[/] measures them on this machine")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    [record] = _fit_all([args.model], args, args.checkpoint)
    if not distributed.is_main():  # torchrun: rank 0 speaks for the run
        return 0
    if _printed_json(args, record):
        return 0
    out.print(_results_table([record]))
    kept = "" if record["saved"] else f" (kept: more accurate, {record['previous_accuracy']:.2%})"
    out.print(f"checkpoint {record['checkpoint']}{kept}", highlight=False)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        return _evaluate_seeds(args)
    given = [f"--{k.replace('_', '-')}" for k in SEED_ONLY if getattr(args, k) is not None]
    if given:
        why = "only apply with --seeds N (retraining); plain evaluate scores the saved checkpoint"
        raise UserError(f"{', '.join(given)} {why}")
    model, meta = load_checkpoint(args.model)
    test_split = data.load("test", args.data_dir)
    device = _setup(args)
    ev = evaluate(model.to(device), test_split)
    robust = robustness(model, test_split.images, test_split.labels)
    confusion = confusion_matrix(ev.predictions, test_split.labels)
    per_class = (confusion.diag().float() / confusion.sum(1).float()).tolist()
    trained_with = {k: meta.get(k) for k in ("recipe", "epochs", "seed", "torch_version", "data_sha256")}
    record = {"model": meta["model"], "checkpoint": str(checkpoint_path(args.model))}
    record.update(
        test_accuracy=ev.accuracy,
        test_loss=ev.loss,
        per_class_accuracy=per_class,
        confusion_matrix=confusion.tolist(),
        robustness=robust,
    )
    record.update(trained_with=trained_with, **environment(device))
    if _printed_json(args, record):
        return 0
    scored = f"on {len(test_split):,} test images (loss {ev.loss:.4f})"
    out.print(f"[bold]{meta['model']}[/]: test accuracy [bold]{ev.accuracy:.2%}[/] {scored}")
    out.print(f"checkpoint {record['checkpoint']}", highlight=False)
    t = Table(title="confusion matrix (rows: true digit, columns: predicted)", box=None, padding=(0, 1))
    for col in ("true", *map(str, range(10)), "accuracy"):
        t.add_column(col, justify="right")
    for d in range(10):
        style = ["red" if v else "dim" for v in confusion[d].tolist()]
        style[d] = "bold green"  # the diagonal: right answers; red: mistakes
        cells = [f"[{s}]{v}[/]" for s, v in zip(style, confusion[d].tolist(), strict=True)]
        t.add_row(str(d), *cells, f"{per_class[d]:.2%}")
    out.print(t)
    t = Table(
        title="robustness: test accuracy of the same images, perturbed (seeded)", box=None, padding=(0, 1)
    )
    for col in robust:
        t.add_column(col, justify="right")
    t.add_row(*(f"{a:.2%}" for a in robust.values()))
    out.print(t)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        info, path = model_info(name), checkpoint_path(name)
        row = {"model": name, "description": info.description, "params": info.params, "macs": info.macs}
        row.update(trained=False, test_accuracy=None, checkpoint=str(path))
        if path.is_file():
            try:
                meta = read_checkpoint(name)["meta"]
                row.update(trained=True, test_accuracy=meta.get("test_accuracy"), recipe=meta.get("recipe"))
            except UserError as e:
                row.update(error=str(e), problem=getattr(e, "problem", "damaged"))
        rows.append(row)
    if _printed_json(args, {"models": rows}):
        return 0
    t = Table(title="mnist-zoo models")
    for col in ("model", "params", "multiply-adds", "trained", "test accuracy"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        acc = f"{r['test_accuracy']:.2%}" if isinstance(r["test_accuracy"], float | int) else "-"
        trained = r.get("problem") or ("yes" if r["trained"] else "no")
        t.add_row(r["model"], f"{r['params']:,}", f"{r['macs']:,}", trained, acc)
    out.print(t)
    for r in rows:
        out.print(f"  {r['model']:<6} {r['description']}", highlight=False)
    out.print(f"checkpoints in {checkpoint_dir()}", highlight=False)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    for split in data.SPLITS:
        s = data.load(split, args.data_dir)
        x = s.images.float() / 255
        counts = torch.bincount(s.labels, minlength=10).tolist()
        print(f"{split}: {len(s):,} images, mean {x.mean():.4f} std {x.std():.4f}, label counts {counts}")
    print(f"verified against pinned SHA-256; data id {data.DATA_SHA256[:16]}")
    return 0


# --- the studies: cv, evaluate --seeds, compare -----------------------------------------------------------


def _training_data(args: argparse.Namespace) -> tuple[data.Split, dict | None]:
    """The 60k training images, or the stratified --train-size subset of them (and how it was drawn)."""
    split = data.load("train", args.data_dir)
    if args.train_size is None or args.train_size == len(split):
        return split, None
    subset = stratified_subset(split.labels, args.train_size)
    return split.subset(subset), {"size": args.train_size, "stratified": True}


def _draw(args: argparse.Namespace, record: dict, draw: Callable[[], dict[str, Path]]) -> None:
    """record["plots"] = draw() (name -> path) unless --no-plots or matplotlib is missing; then say why."""
    record["plots"] = {}
    if getattr(args, "no_plots", False):
        record["plots_skipped"] = "--no-plots"
    elif not plots.available():
        record["plots_skipped"] = "matplotlib is not installed (pip install 'mnist-zoo[plots]')"
    else:
        record["plots"] = {name: str(path) for name, path in draw().items()}


def _print_files(record: dict) -> None:
    """The pictures and the JSON record, one path a line."""
    if record.get("plots_skipped"):
        out.print(f"pictures skipped: {record['plots_skipped']}")
    files = {**record.get("plots", {}), **({"results": record["report"]} if "report" in record else {})}
    for name, path in files.items():
        out.print(f"  {name:<16} {path}", highlight=False)


def _mean_std(s: dict) -> str:
    return f"{s['mean']:.2%}" + (f" ± {s['std']:.2%}" if s["std"] is not None else "")


def _interval(s: dict) -> str:
    return "needs 2+ runs" if s["ci_low"] is None else f"{s['ci_low'] * 100:.2f}-{s['ci_high']:.2%}"


def _reports(args: argparse.Namespace) -> Path:
    """The report folder, checked writable before any training (the runs are saved there as they finish)."""
    folder = report_dir(args.report_dir)
    what = f"--report-dir {folder}" if args.report_dir else f"report folder {folder}"
    return check_output_dir(folder, what, parents=True)


def _note_reused(store: RunStore) -> None:
    if store.reused:
        err.print(f"reused {store.reused} saved run(s) from {store.directory} (--fresh retrains them)")


def cmd_cv(args: argparse.Namespace) -> int:
    recipe = recipe_for(args.model, args.recipe, epochs=args.epochs)
    folder = _reports(args)
    split, subset = _training_data(args)
    crossval.stratified_folds(split.labels, args.folds)  # a bad --folds is one line, before _setup's notes
    device = _setup(args)
    summary_path, stem = folder / f"cv-{args.model}.json", folder / f"cv-{args.model}"
    store = _store(args, folder)
    options = dict(folds=args.folds, seed=args.seed, device=device, store=store, subset=subset)
    try:
        summary = crossval.cross_validate(
            args.model, recipe, split, summary_path=summary_path, progress=_progress(args), **options
        )
    except KeyboardInterrupt:
        if summary_path.is_file():
            done = json.loads(summary_path.read_text()).get("folds_done", 0)
            err.print(f"{done} finished fold(s) saved in {summary_path}; the same command again resumes")
        raise
    _note_reused(store)
    summary["report"], folds = str(summary_path), summary["fold_results"]

    def draw() -> dict[str, Path]:
        curves = [(f"fold {r['fold']}", r["history"]) for r in folds]
        title = f"{args.model}: {args.folds}-fold cross-validation, {recipe.epochs} epoch(s) per fold"
        scores = {args.model: [r["accuracy"] for r in folds]}
        box_title = f"{args.model}: held-out accuracy of each of {args.folds} folds"
        return {
            "curves": plots.learning_curves(curves, f"{stem}-curves.png", title, heldout="held-out fold"),
            "scores": plots.score_boxplot(scores, f"{stem}-scores.png", box_title, "held-out fold"),
        }

    _draw(args, summary, draw)
    if _printed_json(args, summary, summary_path):
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
    how = f"recipe {recipe.name}, {recipe.epochs} epoch(s), seed {args.seed}; wall time {summary['wall_seconds']:.0f} s"
    out.print(
        f"[bold]{args.model}[/]: held-out accuracy [bold]{_mean_std(s)}[/] (mean ± std over {s['n']} folds)"
    )
    out.print(f"95% interval of the mean: {_interval(s)}; {how}")
    _print_files(summary)
    return 0


def _studies(args: argparse.Namespace, models: list[str], n_seeds: int) -> tuple:
    """Train (or reuse) n_seeds runs of every model under one progress bar."""
    if not 1 <= n_seeds <= compare.MAX_SEEDS:
        raise UserError(f"--seeds must be between 1 and {compare.MAX_SEEDS}, got {n_seeds}")
    recipes = {m: recipe_for(m, args.recipe or "default", epochs=args.epochs) for m in models}
    first = args.seed or 0
    seeds = list(range(first, first + n_seeds))
    folder = _reports(args)
    train, subset = _training_data(args)
    test = data.load("test", args.data_dir)
    device = _setup(args)
    store = _store(args, folder)
    jobs = {m: compare.seed_jobs(m, recipes[m], seeds, subset) for m in models}
    everything = [j for m in models for j in jobs[m]]  # one list: with --ray, every model's seeds at once
    total = sum(steps_for(len(train), recipes[m]) * n_seeds for m in models)
    try:
        with Progress("train", total, _progress(args)) as bar:
            records = store.run_all(everything, {"train": train, "test": test}, device=device, progress=bar)
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
    return studies, predictions, test, device


def _evaluate_seeds(args: argparse.Namespace) -> int:
    """`evaluate MODEL --seeds N`: retrain MODEL with N seeds; test accuracy mean ± std and a 95% interval."""
    if args.model not in list_models():
        zoo = ", ".join(list_models())
        raise UserError(
            f"--seeds retrains from scratch, so MODEL must be a zoo model ({zoo}), not {args.model!r}"
        )
    start = time.perf_counter()
    studies, predictions, test, device = _studies(args, [args.model], args.seeds)
    study = studies[0]
    stem = report_dir(args.report_dir) / f"seeds-{args.model}"
    record = {"schema": compare.SEEDS_SCHEMA, "command": "evaluate", **study, "report": f"{stem}.json"}
    _draw(args, record, lambda: plots.seed_pictures(study, predictions[0], test, str(stem)))
    record.update(wall_seconds=time.perf_counter() - start, **environment(device))
    if _printed_json(args, record, stem.with_suffix(".json")):
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
        f"[bold]{args.model}[/]: test accuracy [bold]{_mean_std(s)}[/] (mean ± std over {s['n']} seed(s))"
    )
    out.print(f"95% interval of the mean: {_interval(s)}")
    _print_files(record)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    models = args.models or list_models()
    for m in models:
        model_info(m)
    if len(set(models)) != len(models) or len(models) < 2:
        raise UserError("compare needs two or more different models, e.g. compare mlp dnn lenet")
    start = time.perf_counter()
    studies, predictions, test, device = _studies(args, models, args.seeds)
    pairs = compare.compare_pairs(studies, predictions, test.labels)
    folder = report_dir(args.report_dir)
    stem = folder / f"compare-{'-'.join(models)}"
    record = {"schema": compare.COMPARE_SCHEMA, "command": "compare", "models": studies, "pairs": pairs}
    record["report"] = f"{stem}.json"

    def draw() -> dict[str, Path]:
        scores = {s["model"]: [r["accuracy"] for r in s["runs"]] for s in studies}
        title = f"test accuracy, {args.seeds} seed(s) per model"
        paths = {"scores": plots.score_boxplot(scores, f"{stem}-scores.png", title, "test set")}
        for s, p in zip(studies, predictions, strict=True):
            for name, path in plots.seed_pictures(s, p, test, str(folder / f"seeds-{s['model']}")).items():
                paths[f"{s['model']} {name}"] = path
        return paths

    _draw(args, record, draw)
    record.update(wall_seconds=time.perf_counter() - start, **environment(device))
    if _printed_json(args, record, stem.with_suffix(".json")):
        return 0
    t = Table(
        title=f"{len(studies)} models, {args.seeds} seed(s) each, scored on the same {len(test):,} test images"
    )
    for col in ("model", "params", "accuracy (mean ± std)", "95% CI", "range", "train s"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for s in studies:
        a, span = s["accuracy"], f"{s['accuracy']['min'] * 100:.2f}-{s['accuracy']['max']:.2%}"
        params, seconds = f"{model_info(s['model']).params:,}", f"{s['train_seconds']['mean']:.1f}"
        t.add_row(s["model"], params, _mean_std(a), _interval(a), span, seconds)
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
    _print_files(record)
    return 0


def _p(p: float | None) -> str:
    return compare.format_p(p).removeprefix("p ").removeprefix("= ")


def cmd_sweep(args: argparse.Namespace) -> int:
    cluster.import_ray("sweep")  # first: without Ray, nothing of a sweep can run
    base = recipe_for(args.model, args.recipe, epochs=args.epochs)
    grid = sweep.parse_grid(args.grid)
    sweep.configurations(base, grid)  # every combination checked before any work
    if not 1 <= args.seeds <= compare.MAX_SEEDS:
        raise UserError(f"--seeds must be between 1 and {compare.MAX_SEEDS}, got {args.seeds}")
    folder = _reports(args)
    best_path = Path(args.out) if args.out else folder / f"sweep-{args.model}-best.json"
    check_output_dir(best_path.parent, f"--out {best_path}", parents=True)
    split, subset = _training_data(args)
    crossval.stratified_folds(split.labels, sweep.VALIDATION_FOLDS if args.folds is None else args.folds)
    args.ray = args.ray or cluster.LOCAL  # a sweep always runs on Ray: a local one unless told otherwise
    device = _setup(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    runs_per_config = args.seeds * (args.folds or 1)
    if args.scheduler == "asha" and runs_per_config > 1:
        raise UserError(
            f"--scheduler asha stops single trials, and each of the {runs_per_config} folds or seeds of a "
            "configuration is one: it would rank configurations on whichever folds survived; use fifo"
        )
    args.scheduler = args.scheduler or ("asha" if runs_per_config == 1 else "fifo")
    trials = len(sweep.configurations(base, grid)) * runs_per_config
    err.print(
        f"sweep {args.model}: {trials} trial(s) on Ray, {torch.get_num_threads()} thread(s) each, "
        f"scheduler {args.scheduler}"
    )
    start = time.perf_counter()
    record = sweep.run(
        args.model,
        base,
        grid,
        split,
        seeds=seeds,
        folds=args.folds,
        scheduler=args.scheduler,
        address=_address(args.ray),
        threads=torch.get_num_threads(),
        device=device,
        storage=folder / "tune",
    )
    record.update(subset=subset, wall_seconds=time.perf_counter() - start, **environment(device))
    top = record["configurations"][0]
    if top["finished"]:
        provenance = {"sweep": str(folder / f"sweep-{args.model}.json"), "grid": top["grid"]}
        provenance["heldout_accuracy"] = top["accuracy"]
        sweep.write_recipe_file(best_path, args.model, replace(base, name="sweep", **top["grid"]), provenance)
        record["best_recipe_file"] = str(best_path)
    if _printed_json(args, record, folder / f"sweep-{args.model}.json"):
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
            str(rank),
            *cells,
            _mean_std(a) if a else "-",
            span,
            f"{c['finished']}/{c['runs']}",
            stopped or "-",
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
        out.print(
            f"train it on all 60,000 images: {PROG} train {args.model} --recipe-file {best_path}",
            highlight=False,
        )
    else:
        out.print("no configuration finished every run: no recipe file written")
    out.print(f"  results          {folder / f'sweep-{args.model}.json'}", highlight=False)
    return 0


# --- predict -------------------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 0 when every file was answered, 1 when any file could not be read (the rest still are)."""
    if args.save_prepared:
        _reports(args)
    device = _setup(args)
    if args.model in list_models():  # its checkpoint, trained first with the default recipe if missing
        model, meta = ensure_trained(args.model, data_dir=args.data_dir, progress=not args.json)
    else:
        model, meta = load_checkpoint(args.model)
    results, prepared = predict.predict_files(model.to(device), args.files)
    record = {"schema": "mnist-zoo/predict/1", "command": "predict", "model": meta["model"]}
    record.update(checkpoint=str(checkpoint_path(args.model)), results=results, **environment(device))
    good = [(r, p) for r, p in zip(results, prepared, strict=True) if p is not None]
    if args.save_prepared and good:
        name = report_dir(args.report_dir) / f"predict-{meta['model']}-inputs.png"
        captions = [f"{Path(r['file']).name[:14]}\n{r['digit']} ({r['probability']:.0%})" for r, _ in good]
        title = f"what {meta['model']} was given: 28x28, MNIST-style (file, digit, probability)"
        images = [p.image for _, p in good]
        _draw(args, record, lambda: {"inputs": plots.digit_grid(images, captions, name, title)})
    for r in results:  # a failed file is one line on stderr, with --json too (never wrapped)
        if not r["ok"]:
            print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
        elif not args.json:
            unsure = "  (unsure)" if r["probability"] < 0.5 else ""
            out.print(f"{r['file']}: [bold]{r['digit']}[/] ({r['probability']:.1%}){unsure}", highlight=False)
    if args.json:
        print(json.dumps(record))
    else:
        _print_files(record)
    return 0 if len(good) == len(results) else 1


COMMANDS = {
    "all": cmd_all,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "list": cmd_list,
    "cv": cmd_cv,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "predict": cmd_predict,
    "data": cmd_data,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if getattr(args, "ray", None) is not None:  # first: `compare --ray mlp dnn` gave --ray a model name
            cluster.check_address(_address(args.ray))
        return COMMANDS[args.command](args)

    return guarded(command)


if __name__ == "__main__":
    sys.exit(main())
