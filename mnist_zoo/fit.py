"""Checkpoint policy: train a model and keep it only if it is not worse than the one it would replace; train a
missing model before it is used.

    python -m mnist_zoo train lenet                 # fit(): train, evaluate on the test set, save if not worse
    python -m mnist_zoo train lenet --replace       # save even when less accurate than the saved checkpoint
    python -m export lenet                          # ensure_trained(): trains lenet first when it has no checkpoint
    >>> from mnist_zoo.fit import ensure_trained
    >>> model, meta = ensure_trained("lenet")

The same path serves one process and every rank of a torchrun launch (`ranks`): rank 0 evaluates and saves.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch import nn

from mnist_zoo.checkpoint import (
    check_checkpoint_path,
    checkpoint_path,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from mnist_zoo.cpu import default_threads
from mnist_zoo.data import DATA_SHA256, Split, load
from mnist_zoo.progress import Progress
from mnist_zoo.recipes import Recipe, recipe_for, steps_for
from mnist_zoo.targets import TARGET_ACCURACY
from mnist_zoo.train import Diverged, OneProcess, TrainResult, train
from mnist_zoo.util import UserError, environment, resolve_device, write_failed

# The longest a save waits for another training's save into the same checkpoint (a save takes about a second).
SAVE_LOCK_S = 120


def fit(
    model_name: str,
    recipe: Recipe,
    train_split: Split,
    test_split: Split,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    streams: int | None = None,
    overwrite: bool = False,
    ranks: OneProcess | None = None,
) -> dict:
    """Train on the training set, evaluate on the test set, save the checkpoint; returns the result record.

    A diverged run raises Diverged and saves nothing. A run less accurate on the test set than the checkpoint it
    would replace is not saved either (record["saved"] is False, and stderr says so with both accuracies) unless
    `overwrite`: no quick experiment overwrites a better model by accident. Under torchrun (`ranks`), every rank
    trains and rank 0 alone evaluates and saves; the other ranks return their record, unsaved."""
    ranks = ranks or OneProcess()
    main = ranks.rank == 0
    target = Path(checkpoint) if checkpoint is not None else checkpoint_path(model_name)
    steps = steps_for(len(train_split), recipe)
    label = model_name if ranks.world == 1 else f"{model_name} x{ranks.world}"
    with Progress("train", steps, progress and main) as bar:
        try:
            result = train(
                model_name,
                recipe,
                train_split,
                test_split if main else None,
                seed=seed,
                device=device,
                threads=threads,
                timed=(TARGET_ACCURACY[model_name],),
                on_step=bar.tracker(label, steps),
                streams=streams,
                ranks=ranks,
            )
        except Diverged as e:
            kept = f"{target} is as it was" if target.exists() else "no checkpoint was written"
            raise Diverged(f"{e}; nothing was saved ({kept})") from None
    record = _record(model_name, result, device, ranks)
    if not main:
        return {**record, "checkpoint": str(target), "saved": False, "previous_accuracy": None}
    return keep_if_better(result.model, record, target, overwrite)


def _record(model_name: str, result: TrainResult, device: torch.device | str, ranks: OneProcess) -> dict:
    """What a checkpoint and `train --json` say about a run."""
    recipe, final = result.recipe, result.final
    target = TARGET_ACCURACY[model_name]
    record = {"model": model_name, "recipe": recipe.name, "epochs": recipe.epochs}
    record.update(batch_size=recipe.batch_size, lr=recipe.lr, seed=result.seed)
    record.update(
        test_accuracy=final.accuracy if final else None,
        test_loss=final.loss if final else None,
        train_seconds=result.train_seconds,
        target_accuracy=target,
        seconds_to_target=result.seconds_to(target),
        images_per_second=result.images_per_second,
        streams=result.streams,
        precision=result.precision,
        precision_reason=result.precision_reason,
    )
    if result.world > 1:
        record.update(ranks.record(), images_per_rank=result.images_seen // result.world)
    record.update(result.contention, recipe_details=asdict(recipe), history=result.history)
    record.update(data_sha256=DATA_SHA256, **environment(device, result.threads))
    return record


def keep_if_better(model: nn.Module, record: dict, target: Path, overwrite: bool) -> dict:
    """Save `model` with `record` at `target` unless it is less accurate than the checkpoint there and not
    `overwrite`; say on stderr when they differ that way. Returns the record with what was done: "saved", and
    "checkpoint_action" created | replaced | kept, with "previous_accuracy" the other checkpoint's.

    The comparison and the write are one step under a lock on the checkpoint (SAVE_LOCK_S at most), decided
    at save time: two trainings into one file, however they interleave, leave the more accurate model."""
    accuracy = record["test_accuracy"]
    with _locked(target):
        existed, previous = target.exists(), accuracy_of(target, record["model"])
        worse = previous is not None and accuracy < previous
        saved = not worse or overwrite
        if saved:
            save_checkpoint(model.to("cpu"), record, target)
    action = "kept" if not saved else ("replaced" if existed else "created")
    record = {**record, "checkpoint": str(target), "saved": saved, "checkpoint_action": action}
    record["previous_accuracy"] = previous
    if worse:
        acc = f"this run's test accuracy {accuracy:.2%} is below the {previous:.2%} of {target}"
        done = (
            "replaced it (--replace)" if overwrite else "kept it; this run was not saved (--replace saves it)"
        )
        print(f"mnist-zoo: {record['model']}: {acc}: {done}", file=sys.stderr)  # one line, never wrapped
    return record


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold .NAME.lock beside checkpoint `target` (an OS lock: a killed holder releases it) while it is read,
    compared and replaced."""
    lock = FileLock(target.with_name(f".{target.name}.lock"), timeout=SAVE_LOCK_S)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # before OSError: filelock's Timeout is a TimeoutError
        raise UserError(
            f"{target}: another process held its lock for {SAVE_LOCK_S} s; this run was not saved"
        ) from None
    except OSError as e:
        raise write_failed(target.parent, e, "cannot lock a checkpoint in") from None
    try:
        yield
    finally:
        lock.release()


def accuracy_of(path: Path, model_name: str) -> float | None:
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
    model_name: str,
    *,
    data_dir: str | None = None,
    progress: bool = True,
    device: torch.device | str = "auto",
    threads: int | None = None,
) -> tuple[nn.Module, dict]:
    """The model from its checkpoint; when there is none yet, train it with the default recipe first (and say so)
    on `threads` threads (default: as many as the CPUs other processes leave idle)."""
    if not checkpoint_path(model_name).is_file():
        check_checkpoint_path(checkpoint_path(model_name), model_name, explicit=False)
        print(
            f"mnist-zoo: {model_name} has no checkpoint yet; training it with the default recipe",
            file=sys.stderr,
        )
        train_split, test_split = load("train", data_dir), load("test", data_dir)
        recipe = recipe_for(model_name)
        device = resolve_device(device) if isinstance(device, str) else device
        threads = default_threads() if threads is None else threads  # a busy machine gets fewer
        fit(model_name, recipe, train_split, test_split, device=device, threads=threads, progress=progress)
    return load_checkpoint(model_name, expect_model=model_name)
