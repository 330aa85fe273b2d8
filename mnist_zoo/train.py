"""Training and evaluation: the whole split on the device as one uint8 tensor, batches as slices of a randperm.

    python -m mnist_zoo train lenet                       # default recipe, seed 0
    python -m mnist_zoo train lenet --recipe tutorial     # the tutorial's settings, on logits
    >>> from mnist_zoo.train import train, recipe_for
    >>> result = train("dnn", recipe_for("dnn", "default"), seed=0)

No DataLoader and no per-sample transforms: normalising a 60,000-image uint8 tensor slice by slice on the
training device costs microseconds, where the tutorial's PIL-per-image pipeline with 4 worker processes spends
most of a 2-core machine on Python overhead and inter-process copies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from mnist_zoo.data import Split, normalize
from mnist_zoo.models import get_model, model_info
from mnist_zoo.util import UserError, seed_everything, torch_threads


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float  # peak learning rate
    optimizer: str = "sgd"  # sgd | nesterov | adam
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | onecycle (linear warm-up then linear decay to zero)
    warmup: float = 0.0  # fraction of steps spent warming up (onecycle)
    label_smoothing: float = 0.0


# The tutorial's settings (SGD lr 0.1, batch 32, 5 epochs), but trained on logits.
TUTORIAL = Recipe("tutorial", epochs=5, batch_size=32, lr=0.1)
# The default recipe: the fastest route we measured to each model's accuracy target on 2 CPU cores.
# Large-ish batches keep the CPU's matrix kernels busy; Nesterov momentum with a short warm-up and a linear
# decay to zero converges in a few epochs. Tuned on seed 0 and checked on other seeds (README, "Recipes").
# lenet's batch of 256 is two slices of 128 trained at once on 2 cores (see default_streams); at that batch a
# 10% warm-up was unstable (lr 0.2 diverged, 0.12-0.15 lost up to 3 points in short runs), 20% is not.
DEFAULTS = {
    "mlp": Recipe("default", epochs=10, batch_size=128, lr=0.05, optimizer="nesterov", momentum=0.9,
                  schedule="onecycle", warmup=0.1),
    "dnn": Recipe("default", epochs=10, batch_size=128, lr=0.1, optimizer="nesterov", momentum=0.9,
                  weight_decay=5e-4, schedule="onecycle", warmup=0.1),
    "lenet": Recipe("default", epochs=4, batch_size=256, lr=0.15, optimizer="nesterov", momentum=0.9,
                    weight_decay=5e-4, schedule="onecycle", warmup=0.2),
}  # fmt: skip
RECIPES = ("default", "tutorial")


def recipe_for(model: str, recipe: str = "default", **overrides) -> Recipe:
    """The named recipe for a model, with any non-None overrides (epochs, batch_size, lr) applied."""
    model_info(model)  # validates the name
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    base = DEFAULTS[model] if recipe == "default" else TUTORIAL
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for key in ("epochs", "batch_size"):
        if key in overrides and overrides[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {overrides[key]}")
    if "lr" in overrides and not overrides["lr"] > 0:
        raise UserError(f"--lr must be positive, got {overrides['lr']}")
    return replace(base, **overrides)


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    predictions: torch.Tensor  # int64 [N], on the CPU

    def confusion(self, labels: torch.Tensor) -> torch.Tensor:
        """10x10 counts: row = true digit, column = predicted digit."""
        return torch.bincount(labels.cpu() * 10 + self.predictions, minlength=100).reshape(10, 10)


@dataclass
class TrainResult:
    model: nn.Module
    recipe: Recipe
    seed: int
    device: str
    threads: int
    train_seconds: float  # optimisation only: evaluation is not counted
    images_seen: int
    streams: int = 1  # slices of each batch trained concurrently (see default_streams)
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    final: Evaluation | None = None

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else math.nan

    def recipe_dict(self) -> dict:
        return asdict(self.recipe)


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


def _optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    if r.optimizer in ("sgd", "nesterov"):
        # fused: one kernel updates every parameter, instead of a handful of small ops per tensor per step.
        return torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, fused=True,
                               nesterov=r.optimizer == "nesterov", weight_decay=r.weight_decay)  # fmt: skip
    if r.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    raise UserError(f"unknown optimizer {r.optimizer!r}")


# Below this many images per slice, Python's per-op overhead (one interpreter lock for all threads) eats what a
# second core gains: measured on 2 cores, lenet slices of 128 images ran ~20% faster than one 2-thread stream,
# slices of 64 only ~5%.
MIN_STREAM_BATCH = 128


def default_streams(device: torch.device | str, batch_size: int, threads: int | None = None) -> int:
    """How many slices of each batch train concurrently: on a CPU one per thread, while each keeps
    MIN_STREAM_BATCH images; elsewhere 1."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(threads or torch.get_num_threads(), batch_size // MIN_STREAM_BATCH))


def _gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float,
               pool: ThreadPoolExecutor | None, streams: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Set every parameter's .grad to the gradient of the batch's mean loss; returns (loss, correct predictions).

    Why slices: a lenet step on a CPU is a chain of small kernels, and splitting each kernel across the cores
    scales poorly (1.4x on 2 cores). With a pool, each of its threads takes one slice of the batch through forward
    and backward on a core of its own, and the main thread adds the slices' gradients in a fixed order: the sum
    is the whole batch's gradient (up to float rounding) and does not depend on which slice finishes first.
    """
    if pool is None:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()
    params = list(model.parameters())

    def one_slice(xs: torch.Tensor, ys: torch.Tensor) -> tuple:
        logits = model(xs)
        loss = F.cross_entropy(logits, ys, label_smoothing=label_smoothing) * (len(ys) / len(y))
        return loss.detach(), (logits.detach().argmax(1) == ys).sum(), torch.autograd.grad(loss, params)

    slices = list(pool.map(one_slice, x.tensor_split(streams), y.tensor_split(streams)))
    for j, p in enumerate(params):
        p.grad = torch.zeros_like(p)  # in the parameter's memory format, which the fused optimizer expects
        for _, _, grads in slices:
            p.grad += grads[j]
    return sum(s[0] for s in slices), sum(s[1] for s in slices)


def _lr_at(r: Recipe, step: int, total: int) -> float:
    if r.schedule == "constant":
        return r.lr
    warm = max(1, round(r.warmup * total))
    if step < warm:
        return r.lr * (step + 1) / warm
    return r.lr * max(0.0, (total - step) / max(1, total - warm))


def train(
    model_name: str,
    recipe: Recipe,
    train_split: Split,
    eval_split: Split | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    evals_per_epoch: int = 1,
    on_step: Callable[[dict], None] | None = None,
    stop_at_accuracy: float | None = None,
    streams: int | None = None,
) -> TrainResult:
    """Train `model_name` with `recipe` on `train_split`, evaluating on `eval_split` evals_per_epoch times an epoch.

    on_step(info) is called after every step with running loss/accuracy, for progress bars. With
    stop_at_accuracy, training stops at the first evaluation that reaches it (for time-to-accuracy). streams:
    slices of each batch trained concurrently, one thread each (default: default_streams; 1 = plain steps).
    """
    device = torch.device(device)
    seed_everything(seed)
    model = get_model(model_name).to(device)
    if device.type == "cpu" and model_name == "lenet":
        # oneDNN's convolutions ran ~20% faster on channels-last tensors on the CPU.
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, recipe)
    images, labels = train_split.images.to(device), train_split.labels.to(device)
    threads = torch.get_num_threads()
    streams = streams or default_streams(device, recipe.batch_size, threads)
    if streams < 1:
        raise UserError(f"streams must be at least 1, got {streams}")
    result = TrainResult(model, recipe, seed, str(device), threads, 0.0, 0, streams=streams)
    pool = ThreadPoolExecutor(streams, thread_name_prefix="mnist-zoo-slice") if streams > 1 else None
    try:
        with torch_threads(max(1, threads // streams)):
            return _loop(
                result, opt, images, labels, eval_split, pool, evals_per_epoch, on_step, stop_at_accuracy
            )
    finally:
        if pool is not None:
            pool.shutdown()


def _loop(result: TrainResult, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
          eval_split: Split | None, pool: ThreadPoolExecutor | None, evals_per_epoch: int,
          on_step: Callable[[dict], None] | None, stop_at_accuracy: float | None) -> TrainResult:  # fmt: skip
    model, recipe, seed, device = result.model, result.recipe, result.seed, torch.device(result.device)
    n = len(labels)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    eval_at = {round(steps_per_epoch * (k + 1) / evals_per_epoch) for k in range(evals_per_epoch)}
    # Shuffling draws from its own CPU generator, so the order is the same on every device.
    gen = torch.Generator().manual_seed(seed)
    step, clock = 0, 0.0
    for epoch in range(recipe.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        run_loss = torch.zeros((), device=device)
        run_correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        model.train()
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            x, y = normalize(images[idx]), labels[idx]
            for g in opt.param_groups:
                g["lr"] = _lr_at(recipe, step, total)
            loss, correct = _gradients(model, x, y, recipe.label_smoothing, pool, result.streams)
            opt.step()
            step += 1
            seen += len(y)
            result.images_seen += len(y)
            # Running figures stay on the device; reading them back every step would stall a GPU.
            run_loss += loss * len(y)
            run_correct += correct
            if on_step is not None:
                on_step({"epoch": epoch, "step": step, "total_steps": total, "images": seen,
                         "elapsed": clock + time.perf_counter() - t0,
                         "loss": run_loss, "correct": run_correct})  # fmt: skip
            if i + 1 in eval_at:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                clock += time.perf_counter() - t0
                row = {"epoch": epoch + (i + 1) / steps_per_epoch, "step": step, "train_seconds": clock,
                       "train_loss": run_loss.item() / seen, "train_accuracy": run_correct.item() / seen}  # fmt: skip
                if eval_split is not None:
                    with torch_threads(result.threads):  # evaluation uses every thread
                        ev = evaluate(model, eval_split)
                    row.update(eval_loss=ev.loss, eval_accuracy=ev.accuracy)
                    result.final = ev
                result.history.append(row)
                if stop_at_accuracy is not None and row.get("eval_accuracy", 0) >= stop_at_accuracy:
                    result.train_seconds = clock
                    model.eval()
                    return result
                t0 = time.perf_counter()
        clock += time.perf_counter() - t0
    result.train_seconds = clock
    if eval_split is not None and (not result.history or result.history[-1]["step"] != step):
        with torch_threads(result.threads):
            result.final = evaluate(model, eval_split)
    model.eval()
    return result


def progress_bar(
    description: str, total_steps: int, enabled: bool = True
) -> tuple[Callable[[dict], None], object]:
    """A rich progress bar on stderr (loss, accuracy, images/s), returned as (on_step callback, context manager).

    Running loss and accuracy are read back from the device only every few steps, so a GPU is not stalled."""
    from contextlib import nullcontext

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        return (lambda info: None), nullcontext()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=False)  # fmt: skip
    task = progress.add_task(description, total=total_steps, stats="")

    def on_step(info: dict) -> None:
        if info["step"] % 25 and info["step"] != info["total_steps"]:
            return
        loss, acc = info["loss"].item() / info["images"], info["correct"].item() / info["images"]
        rate = info["images"] / max(info["elapsed"], 1e-9) if info["epoch"] == 0 else None
        stats = f"epoch {info['epoch'] + 1}  loss {loss:.4f}  acc {acc:.2%}"
        if rate:
            stats += f"  {rate:,.0f} img/s"
        progress.update(task, completed=info["step"], stats=stats)

    return on_step, progress


def fit(model_name: str, recipe: Recipe, train_split: Split, test_split: Split, *, seed: int = 0,
        device: torch.device | str = "cpu", progress: bool = True, checkpoint: str | None = None,
        streams: int | None = None) -> dict:  # fmt: skip
    """Train on the training set, evaluate on the test set, save the checkpoint; returns the result record."""
    from mnist_zoo.checkpoint import save_checkpoint
    from mnist_zoo.data import DATA_SHA256
    from mnist_zoo.util import environment

    total = math.ceil(len(train_split) / recipe.batch_size) * recipe.epochs
    on_step, bar = progress_bar(f"train {model_name}", total, progress)
    with bar:
        result = train(model_name, recipe, train_split, test_split, seed=seed, device=device, on_step=on_step,
                       streams=streams)  # fmt: skip
    assert result.final is not None
    record = {
        "model": model_name, "recipe": recipe.name, "epochs": recipe.epochs, "batch_size": recipe.batch_size,
        "lr": recipe.lr, "seed": seed, "test_accuracy": result.final.accuracy, "test_loss": result.final.loss,
        "train_seconds": result.train_seconds, "images_per_second": result.images_per_second,
        "streams": result.streams,
        "recipe_details": result.recipe_dict(), "history": result.history, "data_sha256": DATA_SHA256,
        **environment(device),
    }  # fmt: skip
    record["checkpoint"] = str(save_checkpoint(result.model.to("cpu"), record, checkpoint))
    return record


def ensure_trained(model_name: str, *, data_dir: str | None = None, progress: bool = True,
                   device: str = "auto") -> tuple[nn.Module, dict]:  # fmt: skip
    """The model from its checkpoint; when there is none yet, train it with the default recipe first (and say so)."""
    import sys

    from mnist_zoo import data
    from mnist_zoo.checkpoint import checkpoint_path, load_checkpoint
    from mnist_zoo.util import resolve_device

    if not checkpoint_path(model_name).is_file():
        print(f"mnist-zoo: {model_name} has no checkpoint yet; training it with the default recipe",
              file=sys.stderr)  # fmt: skip
        dev = resolve_device(device)
        fit(model_name, recipe_for(model_name), data.load("train", data_dir), data.load("test", data_dir),
            device=dev, progress=progress)  # fmt: skip
    return load_checkpoint(model_name, expect_model=model_name)
