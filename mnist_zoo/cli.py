"""The command line: python -m mnist_zoo {all,train,evaluate,list,cv,compare,sweep,predict,data}.

examples:
    python -m mnist_zoo all                         # train the zoo, evaluate it on the test set, print the table
    python -m mnist_zoo train lenet --epochs 3 --json
    python -m mnist_zoo train lenet --precision bf16  # bfloat16 autocast (the CPU's bf16 units), float32 weights
    python -m mnist_zoo evaluate lenet              # accuracy, per class, confusion matrix, robustness
    python -m mnist_zoo evaluate lenet --seeds 5    # retrain with 5 seeds: mean ± std and a 95% interval
    python -m mnist_zoo compare mlp dnn lenet       # side by side over seeds, and which differences are real
    python -m mnist_zoo cv lenet --folds 5          # stratified k-fold cross-validation on the training set
    python -m mnist_zoo sweep lenet --grid lr=0.1,0.15 --folds 2   # hyperparameters on Ray Tune, held-out data
    python -m mnist_zoo predict lenet seven.png     # the digit in an image file, with its probability
    python -m mnist_zoo list                        # the zoo: params, multiply-adds, trained? accuracy
    python -m mnist_zoo data                        # find, verify and summarise MNIST

Results go to stdout (with --json: exactly one JSON object); progress bars, notes and errors go to stderr.
Trained models are exported by `python -m export` and benchmarked by `pytest --benchmark-only`.
Studies (cv, evaluate --seeds, compare) write JSON records and PNG pictures to the report folder (--report-dir,
else $MNIST_ZOO_REPORTS, else ./reports) and keep every finished training run there: the same command again
reuses them (--fresh retrains), so Ctrl-C loses only the run in progress.
"""

# This module is the parser and the dispatch; the commands live in commands.py (one model or checkpoint) and
# studies.py (many runs).

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mnist_zoo import cluster, commands, compare, crossval, data, distributed, predict, studies, sweep
from mnist_zoo.models import canonical, list_models
from mnist_zoo.recipes import PRECISIONS, RECIPES
from mnist_zoo.util import UserError, guarded

PROG = "mnist-zoo" if Path(sys.argv[0]).name == "mnist-zoo" else "python -m mnist_zoo"
DATA_HELP = "MNIST directory (default: $MNIST_ZOO_DATA, then cache, download, npm)"


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str, doc: str | None = None) -> argparse.ArgumentParser:
        epilog = f"example: {PROG} {name} {example}"
        return sub.add_parser(name, help=help, description=doc or help, epilog=epilog, formatter_class=fmt)

    model_help = f"one of: {', '.join(list_models())}, or a plugin's module:callable (docs/plugins.md)"
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
    precision = (
        "fp32; bf16: bfloat16 autocast, weights stay float32; auto: bf16 where the device has native bf16"
    )
    precision += " units and the model is shown as accurate in it, else fp32 (default: the recipe's, fp32)"
    add("--precision", choices=PRECISIONS, help=precision)
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


def _evaluate(args: argparse.Namespace) -> int:
    """evaluate: with --seeds a study (retraining), else the saved checkpoint scored."""
    return studies.cmd_evaluate_seeds(args) if args.seeds is not None else commands.cmd_evaluate(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "all": commands.cmd_all,
    "train": commands.cmd_train,
    "evaluate": _evaluate,
    "list": commands.cmd_list,
    "cv": studies.cmd_cv,
    "compare": studies.cmd_compare,
    "sweep": lambda args: studies.cmd_sweep(args, PROG),
    "predict": commands.cmd_predict,
    "data": commands.cmd_data,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if distributed.launched() and args.command != "train":  # every rank would do the whole command
            raise UserError(
                f"{args.command} does not run under torchrun, only `train MODEL` does (each rank trains a shard "
                f"of every batch): run `{PROG} {args.command} ...` without torchrun"
            )
        # A module:callable spec becomes its model's declared name, once, before any command uses it.
        if getattr(args, "model", None):
            args.model = canonical(args.model)
        if getattr(args, "models", None):
            args.models = [canonical(m) for m in args.models]
        ray = getattr(args, "ray", None)
        if ray is not None:  # first: `compare --ray mlp dnn` gave --ray a model name
            cluster.check_address(None if ray == cluster.LOCAL else ray)
        return COMMANDS[args.command](args)

    return guarded(command, quiet=not distributed.is_main())  # under torchrun, rank 0 alone says what failed


if __name__ == "__main__":
    sys.exit(main())
