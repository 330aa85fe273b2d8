"""The training loop and evaluation: the whole split on the device as one uint8 tensor, batches as slices of a
randperm. The only module of the zoo that runs backward passes.

    python -m mnist_zoo train lenet                       # recipes.py: the default recipe; fit.py: the checkpoint
    >>> from mnist_zoo import data
    >>> from mnist_zoo.recipes import recipe_for
    >>> from mnist_zoo.train import train
    >>> result = train("dnn", recipe_for("dnn"), data.load("train"), data.load("test"), seed=0, threads=2)
    >>> result.final.accuracy

One loop for every case; what differs is how a step computes the batch's gradient: in one stream, in slices of
the batch on threads of one process (SliceGradient), or as one rank's shard under torchrun (ShardGradient,
through `ranks`: distributed.py). No DataLoader and no per-sample transforms: normalising a 60,000-image uint8
tensor slice by slice on the training device costs microseconds, where a PIL-per-image pipeline with worker
processes spends most of a small machine on Python overhead and inter-process copies.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mnist_zoo.augment import random_affine
from mnist_zoo.cpu import Contention
from mnist_zoo.data import Split, normalize
from mnist_zoo.models import get_model, model_info
from mnist_zoo.precision import autocast, check_no_enclosing_autocast, choose
from mnist_zoo.recipes import Recipe, lr_at
from mnist_zoo.util import UserError, seed_everything, torch_threads

# Below this many images per slice, Python's per-op overhead (one interpreter lock for all threads) eats what
# another core gains (docs/benchmarks.md, "Where lenet's training speed comes from").
MIN_STREAM_BATCH = 128
# Time to a target accuracy is resolved to this fraction of an epoch: the weights are copied this many times an
# epoch (microseconds for these models), and once an epoch's evaluation first reaches the target, the copies of
# that epoch are evaluated in order to find the first one that did. Evaluating the test set this often all
# along would cost more than training the small models; this costs at most TIMING_POINTS - 1 evaluations a run.
TIMING_POINTS = 20
# The running loss is checked for NaN or infinity every this many steps (a read-back from the device; on a GPU it
# waits for the queued steps), the weights at every evaluation. A diverged run stops there, long before its end.
FINITE_CHECK_STEPS = 10
EXIT_DIVERGED = 3  # as export's failed verification: the run finished its checks and its result is unusable


class Diverged(UserError):
    """Training produced a non-finite loss or weights: the run is stopped and nothing of it is saved."""

    exit_code = EXIT_DIVERGED


def default_streams(device: torch.device | str, batch_size: int, threads: int) -> int:
    """How many slices of each batch train concurrently: on a CPU one per thread, while each keeps
    MIN_STREAM_BATCH images; elsewhere 1."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(threads, batch_size // MIN_STREAM_BATCH))


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
    world: int = 1  # processes training together (torchrun); 1 without it
    train_seconds: float = 0.0  # optimisation only: evaluation is not counted
    images_seen: int = 0  # by all processes together
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    final: Evaluation | None = None
    contention: dict = field(default_factory=dict)  # cpu.Contention.record(): others' share of the CPUs
    precision: str = "fp32"  # what ran: precision.choose() from the recipe's precision, and why
    precision_reason: str = ""

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


class SliceGradient:
    """gradient(x, y): set every parameter's .grad to the gradient of the batch's mean loss; returns this
    process's (loss sum, right answers, images) of the batch, the first two as tensors on the device.

    With one stream, a plain forward and backward pass. Why slices on a CPU: a small model's step is a chain of
    small kernels, and splitting each kernel across the cores scales poorly. With `streams` > 1, a pool thread
    per slice takes its part of the batch through forward and backward on a core of its own, and the main thread
    adds the slices' gradients in a fixed order: the sum is the whole batch's gradient (up to float rounding)
    and does not depend on which slice finishes first.

    cast() is the context of each forward pass and loss, entered on the thread that runs them (autocast is per
    thread; precision.py); scaler scales the loss before backward (float16 on a GPU; disabled otherwise)."""

    cast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def __init__(self, model: nn.Module, streams: int) -> None:
        self.model, self.streams, self.params = model, streams, list(model.parameters())
        self.pool = ThreadPoolExecutor(streams, thread_name_prefix="mnist-zoo-slice") if streams > 1 else None

    def __enter__(self) -> SliceGradient:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.pool is None:
            with self.cast():
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
            self.model.zero_grad(set_to_none=True)
            self.scaled(loss).backward()
            return loss.detach() * len(y), (logits.detach().argmax(1) == y).sum(), len(y)

        def one_slice(xs: torch.Tensor, ys: torch.Tensor) -> tuple:
            with self.cast():  # here, on the pool thread: autocast's state is per thread
                logits = self.model(xs)
                loss = F.cross_entropy(logits, ys) * (len(ys) / len(y))
            grads = torch.autograd.grad(self.scaled(loss), self.params)
            return loss.detach(), (logits.detach().argmax(1) == ys).sum(), grads

        slices = list(self.pool.map(one_slice, x.tensor_split(self.streams), y.tensor_split(self.streams)))
        for j, p in enumerate(self.params):
            # zeros_like: in the parameter's memory format, which the fused optimizer expects
            p.grad = torch.zeros_like(p)
            for *_, grads in slices:
                p.grad += grads[j]
        return sum(s[0] for s in slices) * len(y), sum(s[1] for s in slices), len(y)


class ShardGradient(SliceGradient):
    """The gradient of one rank under torchrun: its shard of the batch through DistributedDataParallel (`module`),
    which averages the ranks' gradients during backward. Each rank's loss is its shard's loss sum over the whole
    batch's size, times the world size, so that this average is the gradient of the whole batch's mean loss,
    uneven last batch included. The shards play the part the slices play in one process."""

    def __init__(self, module: nn.Module, rank: int, world: int) -> None:
        super().__init__(module, 1)
        self.rank, self.world = rank, world

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        xs, ys = x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]
        with self.cast():
            logits = self.model(xs)
            if len(ys):
                loss = F.cross_entropy(logits, ys, reduction="sum") / len(y) * self.world
            else:  # a last batch smaller than the world: this rank still joins the gradients' all-reduce
                loss = logits.sum() * 0
        self.model.zero_grad(set_to_none=True)
        self.scaled(loss).backward()
        return loss.detach() * len(y) / self.world, (logits.detach().argmax(1) == ys).sum(), len(ys)


class OneProcess:
    """The ranks of a run in one process: every decision is its own. distributed.Ranks is the torchrun case, with
    the same methods (a shard's gradient, and collectives where these return their argument)."""

    rank, world = 0, 1

    def gradient(self, model: nn.Module, streams: int) -> SliceGradient:
        return SliceGradient(model, streams)

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether `value` is finite on every rank."""
        return bool(torch.isfinite(value))

    def epoch_totals(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> tuple:
        """The epoch's running loss sum, right answers and images, summed over the ranks."""
        return loss, correct, images

    def main_says(self, *flags: bool) -> tuple[bool, ...]:
        """Rank 0's flags, on every rank (rank 0 alone evaluates)."""
        return flags

    def contention(self, c: Contention) -> dict:
        return c.record()

    def record(self) -> dict:
        """What a result records about the processes that trained it."""
        return {}


def train(
    model_name: str,
    recipe: Recipe,
    train_split: Split,
    eval_split: Split | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    timed: tuple[float, ...] = (),
    stop_at_accuracy: float | None = None,
    on_step: Callable[[dict], None] | None = None,
    streams: int | None = None,
    on_eval: Callable[[dict], None] | None = None,
    ranks: OneProcess | None = None,
) -> TrainResult:
    """Train `model_name` with `recipe` on `train_split`, evaluating on `eval_split` after every epoch.

    threads: torch's intra-op threads for this run (default: as torch is set now); the result records them.
    timed: accuracies on `eval_split` whose first crossings are timed to 1 / TIMING_POINTS of an epoch
    (result.seconds_to(accuracy); the history gains the rows of the timing points that found them).
    stop_at_accuracy: timed too, and training ends with the epoch that reached it. on_step(info) is called after
    every step with running loss and accuracy, for progress bars. streams: slices of each batch trained
    concurrently, one thread each (default: default_streams, and 1 for a model with BatchNorm; 1 = plain steps).
    on_eval(row) is called with each epoch's history row as it is made (a sweep reports it to Ray Tune).
    ranks: distributed.Ranks under torchrun (then only rank 0 passes `eval_split`); default: one process.
    The recipe's precision is applied step by step (precision.py); an enclosing torch.autocast is refused.
    """
    check_no_enclosing_autocast(f"training {model_name}")
    device = torch.device(device)
    threads = torch.get_num_threads() if threads is None else threads
    ranks = ranks or OneProcess()
    seed_everything(
        seed
    )  # under torchrun: the same initial weights on every rank (DDP broadcasts rank 0's too)
    model = get_model(model_name).to(device)
    # Slices would each update BatchNorm's running statistics, from two threads at once: a race, and a result
    # that depends on which slice ran first. Under torchrun, the shards are the slices.
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if streams is None:
        one = batchnorm or ranks.world > 1
        streams = 1 if one else default_streams(device, recipe.batch_size, threads)
    if streams < 1 or (streams > 1 and (batchnorm or ranks.world > 1)):
        why = "it must be at least 1"
        if streams > 1:
            why = "a model with BatchNorm trains in 1" if batchnorm else "each torchrun rank trains in 1"
        raise UserError(f"{model_name} cannot train in {streams} streams: {why}")
    if device.type == "cpu" and model_info(model_name).channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = optimizer(model, recipe)
    chosen = choose(recipe.precision, model_name, device)
    # A float16 loss would underflow without scaling; bf16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=chosen.precision == "fp16")
    steps_per_epoch = math.ceil(len(train_split) / recipe.batch_size)
    total = round(steps_per_epoch * recipe.epochs)
    timing_points = {round(steps_per_epoch * k / TIMING_POINTS) for k in range(1, TIMING_POINTS)}
    pending = sorted({*timed, stop_at_accuracy} - {None}) if eval_split is not None else []
    points: list[tuple[dict, dict]] = []  # (history row, weights) at this epoch's timing points
    result = TrainResult(model, recipe, seed, str(device), threads, streams, ranks.world)
    result.precision, result.precision_reason = chosen.precision, chosen.reason
    evaluating = 0.0  # evaluation seconds, left out of the training time
    start = _now(device)
    with (
        Contention() as contention,
        ranks.gradient(model, streams) as gradient,
        torch_threads(max(1, threads // streams)),
    ):
        gradient.cast, gradient.scaler = (lambda: autocast(chosen, device)), scaler
        for step, (epoch, i, x, y) in enumerate(batches(train_split, recipe, seed, device)):
            # The epoch's running loss and accuracy stay on the device: reading them back would stall a GPU.
            if i == 0:
                run_loss, run_correct = torch.zeros((), device=device), torch.zeros((), device=device)
                seen = 0  # this process's images of the epoch
            for g in opt.param_groups:
                g["lr"] = lr_at(recipe, step, total)
            loss_sum, correct, images = gradient(x, y)
            scaler.step(opt)  # opt.step(), unless a float16 gradient overflowed
            scaler.update()
            seen += images
            result.images_seen += len(y)
            run_loss += loss_sum
            run_correct += correct
            if (step + 1) % FINITE_CHECK_STEPS == 0 and not ranks.all_finite(run_loss):
                raise Diverged(_diverged(model_name, recipe, step, total, "the loss"))
            if on_step is not None:
                info = {"epoch": epoch, "step": step + 1, "total_steps": total, "images": seen}
                info.update(images_seen=result.images_seen, loss=run_loss, correct=run_correct)
                on_step({**info, "elapsed": time.perf_counter() - start - evaluating})
            last = i + 1 == steps_per_epoch or step + 1 == total  # a fractional last epoch ends early
            if not last and not (pending and i + 1 in timing_points):
                continue
            paused = _now(device)
            result.train_seconds = paused - start - evaluating
            row = {"epoch": epoch + (i + 1) / steps_per_epoch, "step": step + 1, "images": result.images_seen}
            row["train_seconds"] = result.train_seconds
            # A timing point: keep the weights, to evaluate if this epoch reaches a timed accuracy.
            if not last:
                row.update(train_loss=run_loss / seen, train_accuracy=run_correct / seen)
                points.append((row, {k: v.clone() for k, v in model.state_dict().items()}))
                evaluating += _now(device) - paused
                continue
            loss_total, correct_total, images_total = ranks.epoch_totals(run_loss, run_correct, seen)
            row["train_loss"] = (loss_total / images_total).item()
            row["train_accuracy"] = (correct_total / images_total).item()
            ok = math.isfinite(row["train_loss"]) and all(p.isfinite().all() for p in model.parameters())
            what = "the loss or the weights"
            if ok and eval_split is not None:
                with torch_threads(threads):  # evaluation uses every thread
                    result.final = evaluate(model, eval_split)
                    crossed = [a for a in pending if result.final.accuracy >= a]
                    if crossed:  # when, within this epoch: its timing points tell
                        result.history += _first_crossing(model, points, eval_split, max(crossed))
                pending = [a for a in pending if a not in crossed]
                row.update(eval_loss=result.final.loss, eval_accuracy=result.final.accuracy)
                ok, what = math.isfinite(result.final.loss), "the test loss"
            stop = stop_at_accuracy is not None and row.get("eval_accuracy", 0) >= stop_at_accuracy
            ok, stop = ranks.main_says(ok, stop)  # under torchrun, rank 0's verdict: all ranks go on or stop
            if not ok:
                raise Diverged(_diverged(model_name, recipe, step, total, what))
            result.history.append(row)
            points.clear()
            if on_eval is not None:
                on_eval(row)
            evaluating += _now(device) - paused
            if stop:
                break
    result.contention = ranks.contention(contention)
    model.eval()
    return result


def optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's (float32) parameters. fused: one kernel updates every parameter,
    instead of a handful of small ops per tensor per step."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(),
            recipe.lr,
            betas=(recipe.beta1, recipe.beta2),
            weight_decay=recipe.weight_decay,
            fused=True,
        )
    return torch.optim.SGD(
        model.parameters(),
        recipe.lr,
        recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.optimizer == "nesterov",
        fused=True,
    )


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
    augmented if the recipe says so; a fractional last epoch stops after its share of the steps. The
    permutations and the augmentation's draws come from their own CPU generator, so the order and the warps are
    the same on every device and every rank."""
    images, labels = split.images.to(device), split.labels.to(device)
    gen = torch.Generator().manual_seed(seed)
    left = round(math.ceil(len(labels) / recipe.batch_size) * recipe.epochs)
    for epoch in range(math.ceil(recipe.epochs)):
        perm = torch.randperm(len(labels), generator=gen).to(device)
        for i, idx in enumerate(perm.split(recipe.batch_size)):
            if left == 0:
                return
            left -= 1
            augmented = recipe.augment and epoch < recipe.epochs - recipe.plain_epochs
            x = random_affine(images[idx].float(), gen) if augmented else images[idx]
            yield epoch, i, normalize(x), labels[idx]


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: wait for them before reading the clock
    return time.perf_counter()
