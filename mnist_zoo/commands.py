"""The commands about one model or its checkpoint: all, train, evaluate (a checkpoint), list, data, predict.

    python -m mnist_zoo all                         # train the zoo, evaluate it on the test set, print the table
    python -m mnist_zoo train lenet --epochs 3 --json
    python -m mnist_zoo evaluate lenet              # accuracy, per class, confusion matrix, robustness
    python -m mnist_zoo predict lenet seven.png     # the digit in an image file, with its probability

Each command reads its options from argparse's Namespace here, checks every input and output path before any
work, then resolves the shared settings once (settings.py) and passes plain values on.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from rich.table import Table

from mnist_zoo import data, distributed, plots, predict
from mnist_zoo.augment import robustness
from mnist_zoo.checkpoint import (
    check_checkpoint_path,
    checkpoint_dir,
    checkpoint_path,
    load_checkpoint,
    read_checkpoint,
)
from mnist_zoo.fit import ensure_trained, fit
from mnist_zoo.models import list_models, model_info, plugin_problems
from mnist_zoo.output import draw, print_files, printed_json
from mnist_zoo.recipes import Recipe, read_recipe_file, recipe_for
from mnist_zoo.runs import report_dir
from mnist_zoo.settings import Settings
from mnist_zoo.targets import CONTENDED
from mnist_zoo.train import confusion_matrix, evaluate
from mnist_zoo.util import UserError, check_output_dir, environment, out

# Options that `evaluate` honours only with --seeds (without it, evaluate scores the saved checkpoint).
SEED_ONLY = (
    "recipe",
    "epochs",
    "precision",
    "seed",
    "train_size",
    "report_dir",
    "no_plots",
    "no_progress",
    "fresh",
    "ray",
)


def _recipes(names: list[str], args: argparse.Namespace) -> dict[str, Recipe]:
    """Each model's recipe: --recipe or --recipe-file, with any --epochs, --batch-size, --lr, --precision on top."""
    overrides = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, precision=args.precision)
    recipes = {n: recipe_for(n, args.recipe, **overrides) for n in names}  # checks the overrides
    if getattr(args, "recipe_file", None):  # sweep's winner
        if args.recipe != "default":
            raise UserError("--recipe-file replaces --recipe: give one of them")
        given = {k: v for k, v in overrides.items() if v is not None}
        recipes = {n: replace(read_recipe_file(args.recipe_file, n), **given) for n in names}
    return recipes


def _fit(names: list[str], args: argparse.Namespace, checkpoint: str | None = None) -> list[dict]:
    """Train and save `names` (all, train), after checking every input and output path: bad input never costs
    a training. Under torchrun, data-parallel: each rank on its share of this machine's CPUs."""
    recipes = _recipes(names, args)
    if args.streams is not None and args.streams < 1:
        raise UserError(f"--streams must be at least 1, got {args.streams}")
    for name in names:
        check_checkpoint_path(checkpoint or checkpoint_path(name), name, explicit=checkpoint is not None)
    torchrun = distributed.launched()
    if torchrun and args.streams not in (None, 1):
        raise UserError("under torchrun, run `train MODEL` without --streams (each rank trains a shard)")
    train_split, test_split = data.load("train", args.data_dir), data.load("test", args.data_dir)
    settings = Settings.resolve(args, default_threads=distributed.default_threads() if torchrun else None)
    options = dict(
        seed=args.seed, threads=settings.threads, progress=settings.progress, checkpoint=checkpoint
    )
    options.update(streams=args.streams, overwrite=args.replace)
    if torchrun:
        with distributed.process_group(distributed.rank_device(settings.device)) as ranks:
            name = names[0]
            return [
                fit(name, recipes[name], train_split, test_split, device=ranks.device, ranks=ranks, **options)
            ]
    return [fit(n, recipes[n], train_split, test_split, device=settings.device, **options) for n in names]


def _results_table(records: list[dict]) -> Table:
    r = records[0]
    slices = f", {r['streams']} batch slices at once" if r.get("streams", 1) > 1 else ""
    if "world_size" in r:  # torchrun: data-parallel processes
        slices = f" per process, {r['world_size']} processes ({r['backend']})"
    title = f"{r['device_name']} ({r['device']}), {r['threads']} threads{slices}, torch {r['torch_version']}"
    t = Table(title=f"{title}, seed {r['seed']}")
    for col in ("model", "recipe", "epochs", "precision", "test accuracy", "train s", "images/s"):
        t.add_column(col, justify="left" if col in ("model", "recipe", "precision") else "right")
    for r in records:
        speed = (f"{r['train_seconds']:.1f}", f"{r['images_per_second']:,.0f}")
        how = (r["recipe"], f"{r['epochs']:g}", r.get("precision", "fp32"))
        t.add_row(r["model"], *how, f"{r['test_accuracy']:.2%}", *speed)
    contended = [f"{r['model']} {r['contention']:.0%}" for r in records if r["contention"] > CONTENDED]
    if contended:
        t.caption = (
            f"[yellow]contended[/]: other processes took {', '.join(contended)} of the CPUs' time while "
        )
        t.caption += "training: these times are not this machine's speed"
    return t


def cmd_all(args: argparse.Namespace) -> int:
    records = _fit(list_models(), args)
    if printed_json({"results": records}, args.json):
        return 0
    out.print(_results_table(records))
    out.print(f"checkpoints in {checkpoint_dir()}", highlight=False)
    out.print("next: [bold]python -m export all[/] exports and verifies them")
    out.print("      [bold]pytest --benchmark-only[/] measures them on this machine")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    [record] = _fit([args.model], args, args.checkpoint)
    if not distributed.is_main():  # torchrun: rank 0 speaks for the run
        return 0
    if printed_json(record, args.json):
        return 0
    out.print(_results_table([record]))
    kept = "" if record["saved"] else f" (kept: more accurate, {record['previous_accuracy']:.2%})"
    out.print(f"checkpoint {record['checkpoint']}{kept}", highlight=False)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`evaluate MODEL` without --seeds: the saved checkpoint scored on the test set."""
    given = [f"--{k.replace('_', '-')}" for k in SEED_ONLY if getattr(args, k) is not None]
    if given:
        why = "only apply with --seeds N (retraining); plain evaluate scores the saved checkpoint"
        raise UserError(f"{', '.join(given)} {why}")
    model, meta = load_checkpoint(args.model)
    test_split = data.load("test", args.data_dir)
    settings = Settings.resolve(args)
    ev = evaluate(model.to(settings.device), test_split)
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
    record.update(trained_with=trained_with, **environment(settings.device, settings.threads))
    if printed_json(record, settings.json):
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
        row["source"] = info.source  # the zoo's own, or the plugin's entry point or spec
        row.update(trained=False, test_accuracy=None, checkpoint=str(path))
        if path.is_file():
            try:
                meta = read_checkpoint(name)["meta"]
                row.update(trained=True, test_accuracy=meta.get("test_accuracy"), recipe=meta.get("recipe"))
            except UserError as e:
                row.update(error=str(e), problem=getattr(e, "problem", "damaged"))
        rows.append(row)
    for problem in plugin_problems():  # a broken plugin: one line on stderr; the rest of the zoo still lists
        print(f"warning: {problem}", file=sys.stderr)
    if printed_json({"models": rows}, args.json):
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
        where = "" if r["source"] == "mnist_zoo.models" else f" (plugin: {r['source']})"
        out.print(f"  {r['model']:<6} {r['description']}{where}", highlight=False)
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


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 0 when every file was answered, 1 when any file could not be read (the rest still are)."""
    folder = report_dir(args.report_dir)
    if args.save_prepared:
        what = f"--report-dir {folder}" if args.report_dir else f"report folder {folder}"
        check_output_dir(folder, what, parents=True)
    settings = Settings.resolve(args)
    if args.model in list_models():  # its checkpoint, trained first with the default recipe if missing
        model, meta = ensure_trained(
            args.model,
            data_dir=settings.data_dir,
            progress=settings.progress,
            device=settings.device,
            threads=settings.threads,
        )
    else:
        model, meta = load_checkpoint(args.model)
    results, prepared = predict.predict_files(model.to(settings.device), args.files)
    record = {"schema": "mnist-zoo/predict/1", "command": "predict", "model": meta["model"]}
    record.update(checkpoint=str(checkpoint_path(args.model)), results=results)
    record.update(environment(settings.device, settings.threads))
    good = [(r, p) for r, p in zip(results, prepared, strict=True) if p is not None]
    if args.save_prepared and good:
        name = folder / f"predict-{meta['model']}-inputs.png"
        captions = [f"{Path(r['file']).name[:14]}\n{r['digit']} ({r['probability']:.0%})" for r, _ in good]
        title = f"what {meta['model']} was given: 28x28, MNIST-style (file, digit, probability)"
        images = [p.image for _, p in good]
        draw(record, lambda: {"inputs": plots.digit_grid(images, captions, name, title)})
    for r in results:  # a failed file is one line on stderr, with --json too (never wrapped)
        if not r["ok"]:
            print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
        elif not settings.json:
            unsure = "  (unsure)" if r["probability"] < 0.5 else ""
            out.print(f"{r['file']}: [bold]{r['digit']}[/] ({r['probability']:.1%}){unsure}", highlight=False)
    if settings.json:
        print(json.dumps(record))
    else:
        print_files(record)
    return 0 if len(good) == len(results) else 1
