"""Training and evaluation: the whole split on the device as one uint8 tensor, batches as slices of a randperm.

    python -m mnist_zoo train lenet                       # default recipe, seed 0
    python -m mnist_zoo train lenet --recipe tutorial     # the tutorial's settings, on logits
    >>> from mnist_zoo import data
    >>> from mnist_zoo.train import recipe_for, train
    >>> result = train("dnn", recipe_for("dnn"), data.load("train"), data.load("test"), seed=0)
    >>> result.final.accuracy

No DataLoader and no per-sample transforms: normalising a 60,000-image uint8 tensor slice by slice on the
training device costs microseconds, where the tutorial's PIL-per-image pipeline with 4 worker processes spends
most of a 2-core machine on Python overhead and inter-process copies.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from torch import nn

from mnist_zoo.augment import random_affine
from mnist_zoo.checkpoint import (
    check_target,
    checkpoint_path,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from mnist_zoo.cpu import Contention, default_threads
from mnist_zoo.data import DATA_SHA256, Split, load, normalize
from mnist_zoo.models import get_model, model_info
from mnist_zoo.targets import TARGET_ACCURACY
from mnist_zoo.util import UserError, environment, err, resolve_device, seed_everything, torch_threads


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float  # peak learning rate
    optimizer: str = "sgd"  # sgd | nesterov (SGD with Nesterov momentum)
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | onecycle (linear warm-up then linear decay to zero)
    warmup: float = 0.0  # fraction of steps spent warming up (onecycle)
    # Rotate, shift and scale every training image at random (augment.py), except in the last plain_epochs:
    # the test set's digits are upright and centred.
    augment: bool = False
    plain_epochs: int = 0


# The tutorial's settings (SGD lr 0.1, batch 32, 5 epochs), but trained on logits.
TUTORIAL = Recipe("tutorial", epochs=5, batch_size=32, lr=0.1)
# The default recipe: the fastest route we measured to each model's accuracy target on 2 CPU cores.
# Large-ish batches keep the CPU's matrix kernels busy; Nesterov momentum with a short warm-up and a linear
# decay to zero converges in a few epochs. Tuned on seed 0 and checked on other seeds (README, "Recipes").
# lenet's batch of 256 is two slices of 128 trained at once on 2 cores (see default_streams); at that batch a
# 10% warm-up was unstable (lr 0.2 diverged, 0.12-0.15 lost up to 3 points in short runs), 20% is not.
_NESTEROV = dict(optimizer="nesterov", momentum=0.9, schedule="onecycle")
DEFAULTS = {
    "mlp": Recipe("default", epochs=10, batch_size=128, lr=0.05, warmup=0.1, **_NESTEROV),
    "dnn": Recipe("default", epochs=10, batch_size=128, lr=0.1, warmup=0.1, weight_decay=5e-4, **_NESTEROV),
    "lenet": Recipe("default", epochs=4, batch_size=256, lr=0.15, warmup=0.2, weight_decay=5e-4, **_NESTEROV),
    # Augmented digits need more epochs to pay off than plain ones; the last epoch is plain (README, "Recipes").
    "cnn": Recipe(
        "default",
        epochs=16,
        batch_size=256,
        lr=0.1,
        warmup=0.15,
        weight_decay=5e-4,
        augment=True,
        plain_epochs=1,
        **_NESTEROV,
    ),
}
RECIPES = ("default", "tutorial")
# Below this many images per slice, Python's per-op overhead (one interpreter lock for all threads) eats what a
# second core gains: measured on 2 cores, lenet slices of 128 images ran ~20% faster than one 2-thread stream,
# slices of 64 only ~5%.
MIN_STREAM_BATCH = 128
# Time to a target accuracy is resolved to this fraction of an epoch: the weights are copied this many times an
# epoch (microseconds for these models), and once an epoch's evaluation first reaches the target, the copies of
# that epoch are evaluated in order to find the first one that did. Evaluating the test set 20 times an epoch
# all along would cost more than training the small models; this costs at most 19 evaluations a run.
TIMING_POINTS = 20
# The running loss is checked for NaN or infinity every this many steps (a read-back from the device; on a GPU it
# waits for the queued steps), the weights at every evaluation. A diverged run stops there, long before its end.
FINITE_CHECK_STEPS = 10
EXIT_DIVERGED = 3  # as export's failed verification: the run finished its checks and its result is unusable


class Diverged(UserError):
    """Training produced a non-finite loss or weights: the run is stopped and nothing of it is saved."""

    exit_code = EXIT_DIVERGED


def recipe_for(model: str, recipe: str = "default", **overrides) -> Recipe:
    """The named recipe for a model, with any non-None overrides (epochs, batch_size, lr) applied."""
    model_info(model)  # validates the name
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for key in ("epochs", "batch_size"):
        if key in overrides and overrides[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {overrides[key]}")
    if "lr" in overrides and not 0 < overrides["lr"] < math.inf:
        raise UserError(f"--lr must be a finite positive number, got {overrides['lr']}")
    return replace(DEFAULTS[model] if recipe == "default" else TUTORIAL, **overrides)


def lr_at(r: Recipe, step: int, total: int) -> float:
    if r.schedule == "constant":
        return r.lr
    warm = max(1, round(r.warmup * total))
    if step < warm:
        return r.lr * (step + 1) / warm
    return r.lr * max(0.0, (total - step) / max(1, total - warm))


def default_streams(device: torch.device | str, batch_size: int, threads: int | None = None) -> int:
    """How many slices of each batch train concurrently: on a CPU one per thread, while each keeps
    MIN_STREAM_BATCH images; elsewhere 1."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(threads or torch.get_num_threads(), batch_size // MIN_STREAM_BATCH))


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    predictions: torch.Tensor  # int64 [N], on the CPU


@dataclass
class TrainResult:
    model: nn.Module
    recipe: Recipe
    seed: int
    device: str
    threads: int
    streams: int  # slices of each batch trained concurrently (see default_streams)
    train_seconds: float = 0.0  # optimisation only: evaluation is not counted
    images_seen: int = 0
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    final: Evaluation | None = None
    contention: dict = field(default_factory=dict)  # cpu.Contention.record(): others' share of the CPUs

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else math.nan

    def seconds_to(self, accuracy: float) -> float | None:
        """Training seconds until test accuracy first reached `accuracy` (to 1 / TIMING_POINTS of an epoch for
        the accuracies train() was asked to time), or None."""
        return next((h["train_seconds"] for h in self.history if h.get("eval_accuracy", 0) >= accuracy), None)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 2000) -> Evaluation:
    """Accuracy, mean cross-entropy and predictions of `model` on a whole split (on the model's device)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    images, labels = split.images.to(device), split.labels.to(device)
    preds, loss = [], 0.0
    for i in range(0, len(labels), batch_size):
        logits = model(normalize(images[i : i + batch_size]))
        loss += F.cross_entropy(logits, labels[i : i + batch_size], reduction="sum").item()
        preds.append(logits.argmax(1))
    model.train(was_training)
    predictions = torch.cat(preds)
    correct = (predictions == labels).sum().item()
    return Evaluation(correct / len(labels), loss / len(labels), predictions.cpu())


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """10x10 counts: row = true digit, column = predicted digit."""
    return torch.bincount(labels.cpu() * 10 + predictions.cpu(), minlength=100).reshape(10, 10)


class SliceStep:
    """grad(x, y): set every parameter's .grad to the gradient of the batch's mean loss; returns (loss, correct).

    With one stream, a plain forward and backward pass. Why slices on a CPU: a lenet step is a chain of small
    kernels, and splitting each kernel across the cores scales poorly (1.4x on 2 cores). With `streams` > 1, a
    pool thread per slice takes its part of the batch through forward and backward on a core of its own, and
    the main thread adds the slices' gradients in a fixed order: the sum is the whole batch's gradient (up to
    float rounding) and does not depend on which slice finishes first."""

    def __init__(self, model: nn.Module, streams: int) -> None:
        self.model, self.streams, self.params = model, streams, list(model.parameters())
        self.pool = ThreadPoolExecutor(streams, thread_name_prefix="mnist-zoo-slice") if streams > 1 else None

    def __enter__(self) -> SliceStep:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is None:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.model.zero_grad(set_to_none=True)
            loss.backward()
            return loss.detach(), (logits.detach().argmax(1) == y).sum()

        def one_slice(xs: torch.Tensor, ys: torch.Tensor) -> tuple:
            logits = self.model(xs)
            loss = F.cross_entropy(logits, ys) * (len(ys) / len(y))
            grads = torch.autograd.grad(loss, self.params)
            return loss.detach(), (logits.detach().argmax(1) == ys).sum(), grads

        slices = list(self.pool.map(one_slice, x.tensor_split(self.streams), y.tensor_split(self.streams)))
        for j, p in enumerate(self.params):
            # zeros_like: in the parameter's memory format, which the fused optimizer expects
            p.grad = torch.zeros_like(p)
            for *_, grads in slices:
                p.grad += grads[j]
        return sum(s[0] for s in slices), sum(s[1] for s in slices)


def train(
    model_name: str,
    recipe: Recipe,
    train_split: Split,
    eval_split: Split | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    timed: tuple[float, ...] = (),
    stop_at_accuracy: float | None = None,
    on_step: Callable[[dict], None] | None = None,
    streams: int | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model_name` with `recipe` on `train_split`, evaluating on `eval_split` after every epoch.

    timed: accuracies on `eval_split` whose first crossings are timed to 1 / TIMING_POINTS of an epoch
    (result.seconds_to(accuracy); the history gains the rows of the timing points that found them).
    stop_at_accuracy: timed too, and training ends with the epoch that reached it. on_step(info) is called after
    every step with running loss and accuracy, for progress bars. streams: slices of each batch trained
    concurrently, one thread each (default: default_streams, and 1 for a model with BatchNorm; 1 = plain steps).
    on_eval(row) is called with each epoch's history row as it is made (a sweep reports it to Ray Tune).
    """
    device = torch.device(device)
    threads = torch.get_num_threads()
    seed_everything(seed)
    model = get_model(model_name).to(device)
    # Slices would each update BatchNorm's running statistics, from two threads at once: a race, and a result
    # that depends on which slice ran first.
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if streams is None:
        streams = 1 if batchnorm else default_streams(device, recipe.batch_size, threads)
    if streams < 1 or (batchnorm and streams > 1):
        why = "a model with BatchNorm trains in 1" if batchnorm else "it must be at least 1"
        raise UserError(f"{model_name} cannot train in {streams} streams: {why}")
    model, opt = prepare_training(model, model_name, recipe, device)
    steps_per_epoch = math.ceil(len(train_split) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    timing_points = {round(steps_per_epoch * k / TIMING_POINTS) for k in range(1, TIMING_POINTS)}
    pending = sorted({*timed, stop_at_accuracy} - {None}) if eval_split is not None else []
    points: list[tuple[dict, dict]] = []  # (history row, weights) at this epoch's timing points
    result = TrainResult(model, recipe, seed, str(device), threads, streams)
    evaluating = 0.0  # evaluation seconds, left out of the training time
    start = _now(device)
    with (
        Contention() as contention,
        SliceStep(model, streams) as gradient,
        torch_threads(max(1, threads // streams)),
    ):
        for step, (epoch, i, x, y) in enumerate(batches(train_split, recipe, seed, device)):
            # The epoch's running loss and accuracy stay on the device: reading them back would stall a GPU.
            if i == 0:
                run_loss, run_correct = torch.zeros((), device=device), torch.zeros((), device=device)
                seen = 0
            for g in opt.param_groups:
                g["lr"] = lr_at(recipe, step, total)
            loss, correct = gradient(x, y)
            opt.step()
            seen += len(y)
            result.images_seen += len(y)
            run_loss += loss * len(y)
            run_correct += correct
            if (step + 1) % FINITE_CHECK_STEPS == 0 and not torch.isfinite(run_loss):
                raise Diverged(_diverged(model_name, recipe, step, total, "the loss"))
            if on_step is not None:
                info = {"epoch": epoch, "step": step + 1, "total_steps": total, "images": seen}
                info.update(images_seen=result.images_seen, loss=run_loss, correct=run_correct)
                on_step({**info, "elapsed": time.perf_counter() - start - evaluating})
            last = i + 1 == steps_per_epoch
            if not last and not (pending and i + 1 in timing_points):
                continue
            paused = _now(device)
            result.train_seconds = paused - start - evaluating
            row = {"epoch": epoch + (i + 1) / steps_per_epoch, "step": step + 1, "images": result.images_seen}
            row.update(train_seconds=result.train_seconds, train_loss=run_loss / seen)
            row.update(train_accuracy=run_correct / seen)
            # A timing point: keep the weights, to evaluate if this epoch reaches a timed accuracy.
            if not last:
                points.append((row, {k: v.clone() for k, v in model.state_dict().items()}))
                evaluating += _now(device) - paused
                continue
            row.update(train_loss=row["train_loss"].item(), train_accuracy=row["train_accuracy"].item())
            if not (math.isfinite(row["train_loss"]) and all(p.isfinite().all() for p in model.parameters())):
                raise Diverged(_diverged(model_name, recipe, step, total, "the loss or the weights"))
            if eval_split is not None:
                with torch_threads(threads):  # evaluation uses every thread
                    result.final = evaluate(model, eval_split)
                    crossed = [a for a in pending if result.final.accuracy >= a]
                    if crossed:  # when, within this epoch: its timing points tell
                        result.history += _first_crossing(model, points, eval_split, max(crossed))
                pending = [a for a in pending if a not in crossed]
                if not math.isfinite(result.final.loss):
                    raise Diverged(_diverged(model_name, recipe, step, total, "the test loss"))
                row.update(eval_loss=result.final.loss, eval_accuracy=result.final.accuracy)
            result.history.append(row)
            points.clear()
            if on_eval is not None:
                on_eval(row)
            evaluating += _now(device) - paused
            if stop_at_accuracy is not None and row.get("eval_accuracy", 0) >= stop_at_accuracy:
                break
    result.contention = contention.record()
    model.eval()
    return result


def prepare_training(
    model: nn.Module, model_name: str, recipe: Recipe, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model in its training memory layout and the recipe's optimizer (train() and distributed.py)."""
    if device.type == "cpu" and model_info(model_name).channels_last:
        model = model.to(memory_format=torch.channels_last)
    # fused: one kernel updates every parameter, instead of a handful of small ops per tensor per step.
    nesterov = recipe.optimizer == "nesterov"
    opt = torch.optim.SGD(
        model.parameters(),
        recipe.lr,
        recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=nesterov,
        fused=True,
    )
    return model, opt


def _first_crossing(
    model: nn.Module, points: list[tuple[dict, dict]], split: Split, target: float
) -> list[dict]:
    """History rows of the timing points, evaluated in order up to the first that reaches `target` (which is
    also the first crossing of any lower accuracy)."""
    probe, rows = copy.deepcopy(model), []
    for row, weights in points:
        probe.load_state_dict(weights)
        ev = evaluate(probe, split)
        row.update(train_loss=row["train_loss"].item(), train_accuracy=row["train_accuracy"].item())
        rows.append({**row, "eval_loss": ev.loss, "eval_accuracy": ev.accuracy})
        if ev.accuracy >= target:
            break
    return rows


def _diverged(model_name: str, recipe: Recipe, step: int, total: int, what: str) -> str:
    return (
        f"{model_name} diverged at step {step + 1:,} of {total:,}: {what} became NaN or infinite; its peak "
        f"learning rate {recipe.lr:g} is too high (train --lr sets a lower one)"
    )


def batches(split: Split, recipe: Recipe, seed: int, device: torch.device):
    """(epoch, step in epoch, normalised images, labels) of every step: slices of a fresh randperm each epoch,
    augmented if the recipe says so. The permutations and the augmentation's draws come from their own CPU
    generator, so the order and the warps are the same on every device."""
    images, labels = split.images.to(device), split.labels.to(device)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(recipe.epochs):
        perm = torch.randperm(len(labels), generator=gen).to(device)
        for i, idx in enumerate(perm.split(recipe.batch_size)):
            augmented = recipe.augment and epoch < recipe.epochs - recipe.plain_epochs
            x = random_affine(images[idx].float(), gen) if augmented else images[idx]
            yield epoch, i, normalize(x), labels[idx]


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: wait for them before reading the clock
    return time.perf_counter()


class Progress:
    """One rich progress bar on stderr across one or many training runs (folds, seeds):

        with Progress("train", total_steps) as bar:
            train(..., on_step=bar.run("lenet", steps))

    Running loss and accuracy are read back from the device every 25 steps only, so a GPU is not stalled."""

    def __init__(self, description: str, total_steps: int, enabled: bool = True) -> None:
        self.description, self.done, self.enabled = description, 0, enabled
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        times = (TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
        stats = TextColumn("{task.fields[stats]}")
        self.bar = RichProgress(*columns, stats, *times, console=err, disable=not enabled)
        self.task = self.bar.add_task(description, total=total_steps, stats="")

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def run(self, label: str, steps: int) -> Callable[[dict], None] | None:
        """The on_step callback for train() of a run of `steps` steps."""
        base = self.done
        self.done += steps
        if not self.enabled:
            return None
        self.bar.update(self.task, description=f"{self.description} {label}", completed=base)

        def on_step(info: dict) -> None:
            if info["step"] % 25 and info["step"] != info["total_steps"]:
                return
            loss, acc = info["loss"].item() / info["images"], info["correct"].item() / info["images"]
            rate = info["images_seen"] / max(info["elapsed"], 1e-9)
            stats = f"epoch {info['epoch'] + 1}  loss {loss:.4f}  acc {acc:.2%}  {rate:,.0f} img/s"
            self.bar.update(self.task, completed=base + info["step"], stats=stats)

        return on_step

    def skip(self, label: str, steps: int) -> None:
        """A reused run: its steps leave the total rather than fill the bar, so the time left stays honest."""
        total = self.bar.tasks[0].total - steps
        self.bar.update(self.task, description=f"{self.description} {label} (saved)", total=total)


def steps_for(train_size: int, recipe: Recipe) -> int:
    return math.ceil(train_size / recipe.batch_size) * recipe.epochs


def fit(
    model_name: str,
    recipe: Recipe,
    train_split: Split,
    test_split: Split,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    checkpoint: str | None = None,
    streams: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Train on the training set, evaluate on the test set, save the checkpoint; returns the result record.

    A diverged run raises Diverged and saves nothing. A run less accurate on the test set than the checkpoint it
    would replace is not saved either (record["saved"] is False, and stderr says so with both accuracies) unless
    `overwrite`: no quick experiment overwrites a better model by accident."""
    target = Path(checkpoint) if checkpoint is not None else checkpoint_path(model_name)
    previous = _accuracy_of(target, model_name)
    with Progress("train", steps_for(len(train_split), recipe), progress) as bar:
        on_step = bar.run(model_name, steps_for(len(train_split), recipe))
        try:
            result = train(
                model_name,
                recipe,
                train_split,
                test_split,
                seed=seed,
                device=device,
                timed=(TARGET_ACCURACY[model_name],),
                on_step=on_step,
                streams=streams,
            )
        except Diverged as e:
            kept = f"{target} is as it was" if target.exists() else "no checkpoint was written"
            raise Diverged(f"{e}; nothing was saved ({kept})") from None
    record = {
        "model": model_name,
        "recipe": recipe.name,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "seed": seed,
        "test_accuracy": result.final.accuracy,
        "test_loss": result.final.loss,
        "train_seconds": result.train_seconds,
        "target_accuracy": TARGET_ACCURACY[model_name],
        "seconds_to_target": result.seconds_to(TARGET_ACCURACY[model_name]),
        "images_per_second": result.images_per_second,
        "streams": result.streams,
        **result.contention,
        "recipe_details": asdict(recipe),
        "history": result.history,
        "data_sha256": DATA_SHA256,
        **environment(device),
    }
    worse = previous is not None and result.final.accuracy < previous
    saved = not worse or overwrite
    if saved:
        save_checkpoint(result.model.to("cpu"), record, target)
    record.update(checkpoint=str(target), saved=saved, previous_accuracy=previous)
    if worse:
        acc = f"this run's test accuracy {result.final.accuracy:.2%} is below the {previous:.2%} of {target}"
        done = (
            "replaced it (--replace)" if overwrite else "kept it; this run was not saved (--replace saves it)"
        )
        print(f"mnist-zoo: {model_name}: {acc}: {done}", file=sys.stderr)  # one line, never wrapped
    return record


def _accuracy_of(path: Path, model_name: str) -> float | None:
    """The test accuracy of the checkpoint at `path` if it holds a usable `model_name`, else None (replace it)."""
    if not path.is_file():
        return None
    try:
        meta = read_checkpoint(path)["meta"]
    except UserError:
        return None
    accuracy = meta.get("test_accuracy")
    usable = meta["model"] == model_name and isinstance(accuracy, float | int) and math.isfinite(accuracy)
    return float(accuracy) if usable else None


def ensure_trained(
    model_name: str, *, data_dir: str | None = None, progress: bool = True, device: str = "auto"
) -> tuple[nn.Module, dict]:
    """The model from its checkpoint; when there is none yet, train it with the default recipe first (and say so)."""
    if not checkpoint_path(model_name).is_file():
        check_target(checkpoint_path(model_name), model_name, explicit=False)
        print(
            f"mnist-zoo: {model_name} has no checkpoint yet; training it with the default recipe",
            file=sys.stderr,
        )
        train_split, test_split = load("train", data_dir), load("test", data_dir)
        recipe, device = recipe_for(model_name), resolve_device(device)
        with torch_threads(default_threads()):  # as many threads as the idle CPUs: a busy machine gets fewer
            fit(model_name, recipe, train_split, test_split, device=device, progress=progress)
    return load_checkpoint(model_name, expect_model=model_name)
