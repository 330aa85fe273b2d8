"""One model trained data-parallel over many processes, GPUs or machines: torchrun and DistributedDataParallel.

    torchrun --nproc-per-node 2 -m mnist_zoo train lenet              # 2 processes here (gloo on CPUs)
    torchrun --nproc-per-node 4 -m mnist_zoo train lenet --device cuda # one process per GPU (NCCL)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 \\
        -m mnist_zoo train lenet                                       # on each of 2 machines

`train` notices torchrun (its RANK and WORLD_SIZE variables) and trains here instead of in train.fit. Every
rank draws the same batches from the same seeded permutation and takes its shard of each: the global batch is
the recipe's batch, so the recipe means what it means on one process. DDP averages the ranks' gradients; each
rank's loss is weighted by its share of the batch, so that average is the gradient of the whole batch's mean
loss, uneven last batch included. Rank 0 evaluates, logs and saves the checkpoint; the record says the world
size and the backend. Each rank uses its CPUs' share of threads (--threads sets it) and plain steps: the
batch's shards are the slices (train.SliceStep) that a single process cuts on its own.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mnist_zoo import cpu
from mnist_zoo.checkpoint import checkpoint_path, save_checkpoint
from mnist_zoo.data import DATA_SHA256, Split
from mnist_zoo.models import get_model
from mnist_zoo.train import (
    FINITE_CHECK_STEPS,
    Diverged,
    Progress,
    Recipe,
    _accuracy_of,
    _diverged,
    batches,
    evaluate,
    lr_at,
    prepare_training,
    steps_for,
)
from mnist_zoo.util import environment, seed_everything


def launched() -> bool:
    """Whether this process is one rank of a torchrun launch (torchrun sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main() -> bool:
    """Rank 0 (or no torchrun at all): the process that evaluates, prints and saves."""
    return int(os.environ.get("RANK", "0")) == 0


def default_threads() -> int:
    """This machine's CPUs shared among the ranks torchrun started on it."""
    return max(1, math.floor(cpu.available() / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


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
    overwrite: bool = False,
) -> dict:
    """train.fit for one rank: train the shard of every batch, and on rank 0 evaluate, save and return the
    record (other ranks return theirs, unsaved). A diverged run raises Diverged on every rank."""
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        target = Path(checkpoint) if checkpoint is not None else checkpoint_path(model_name)
        previous = _accuracy_of(target, model_name) if rank == 0 else None
        model, result = _train(
            model_name, recipe, train_split, test_split, seed, device, progress and rank == 0
        )
    finally:
        dist.destroy_process_group()
    record = {"model": model_name, "recipe": recipe.name, "epochs": recipe.epochs}
    record.update(batch_size=recipe.batch_size, lr=recipe.lr, seed=seed, **result, streams=1)
    record.update(world_size=world, backend=backend, recipe_details=asdict(recipe), data_sha256=DATA_SHA256)
    record.update(environment(device), checkpoint=str(target), saved=False, previous_accuracy=previous)
    if rank != 0:
        return record
    worse = previous is not None and record["test_accuracy"] < previous
    record["saved"] = not worse or overwrite
    if record["saved"]:
        save_checkpoint(model.to("cpu"), record, target)
    if worse:
        acc = (
            f"this run's test accuracy {record['test_accuracy']:.2%} is below the {previous:.2%} of {target}"
        )
        done = (
            "replaced it (--replace)" if overwrite else "kept it; this run was not saved (--replace saves it)"
        )
        print(f"mnist-zoo: {model_name}: {acc}: {done}", file=sys.stderr)
    return record


def _train(
    name: str,
    recipe: Recipe,
    train_split: Split,
    test_split: Split,
    seed: int,
    device: torch.device,
    bar: bool,
) -> tuple[torch.nn.Module, dict]:
    rank, world = dist.get_rank(), dist.get_world_size()
    seed_everything(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model, opt = prepare_training(get_model(name).to(device), name, recipe, device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = math.ceil(len(train_split) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    history, images, evaluating, final = [], 0, 0.0, None
    own = psutil.Process()
    cpu0, wall0, seen = sum(own.cpu_times()[:2]), time.perf_counter(), 0
    with (
        Progress("train", steps_for(len(train_split), recipe), bar) as progress,
        cpu.Contention() as contention,
    ):
        on_step = progress.run(f"{name} x{world}", total)
        start = _now(device)
        for step, (epoch, i, x, y) in enumerate(batches(train_split, recipe, seed, device)):
            if i == 0:  # this rank's running loss sum, correct answers and images in the epoch
                stats, seen = torch.zeros(3, dtype=torch.float64, device=device), 0
            xs, ys = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
            for g in opt.param_groups:
                g["lr"] = lr_at(recipe, step, total)
            logits = ddp(xs)
            # DDP averages the ranks' gradients: world x this shard's share of the batch turns that average
            # into the gradient of the whole batch's mean loss.
            loss = (
                F.cross_entropy(logits, ys, reduction="sum") / len(y) * world if len(ys) else logits.sum() * 0
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images, seen = images + len(y), seen + len(ys)
            stats[0] += loss.detach() * len(y) / world  # this shard's loss sum
            stats[1] += (logits.detach().argmax(1) == ys).sum()
            stats[2] += len(ys)
            if (step + 1) % FINITE_CHECK_STEPS == 0 and not _everywhere_finite(stats[0]):
                raise Diverged(_diverged(name, recipe, step, total, "the loss"))
            if on_step is not None:
                info = {"epoch": epoch, "step": step + 1, "total_steps": total, "images": seen * world}
                info.update(images_seen=images, loss=stats[0] * world, correct=stats[1] * world)
                on_step({**info, "elapsed": time.perf_counter() - start - evaluating})
            if i + 1 != steps_per_epoch:
                continue
            paused = _now(device)
            dist.all_reduce(stats)  # the epoch's running loss and accuracy over every rank's shard
            row = {
                "epoch": epoch + 1.0,
                "step": step + 1,
                "images": images,
                "train_seconds": paused - start - evaluating,
            }
            row.update(
                train_loss=stats[0].item() / stats[2].item(), train_accuracy=stats[1].item() / stats[2].item()
            )
            ok = torch.ones(1, device=device)
            if rank == 0:  # rank 0 alone evaluates; the others wait for its verdict on the weights
                final = evaluate(model, test_split)
                row.update(eval_loss=final.loss, eval_accuracy=final.accuracy)
                finite = all(p.isfinite().all() for p in model.parameters()) and math.isfinite(final.loss)
                ok[0] = float(finite and math.isfinite(row["train_loss"]))
            dist.broadcast(ok, src=0)
            if not ok.item():
                raise Diverged(_diverged(name, recipe, step, total, "the loss or the weights"))
            history.append(row)
            evaluating += _now(device) - paused
    train_seconds = history[-1]["train_seconds"]
    result = {"train_seconds": train_seconds, "images_per_second": images / train_seconds, "history": history}
    wall, own_cpu = time.perf_counter() - wall0, sum(own.cpu_times()[:2]) - cpu0
    result.update(images_per_rank=images // world, **_contention(contention, wall, own_cpu))
    if final is not None:
        result.update(test_accuracy=final.accuracy, test_loss=final.loss)
    model.eval()
    return model, result


def _everywhere_finite(value: torch.Tensor) -> bool:
    """Whether the value is finite on every rank (all decide alike, so none is left waiting in a collective)."""
    flag = torch.tensor([float(torch.isfinite(value))], device=value.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _contention(c: cpu.Contention, wall: float, own_cpu: float) -> dict:
    """c.record() with the other ranks on this machine not counted as other processes: they are this run."""
    peers = [None] * dist.get_world_size()
    dist.all_gather_object(peers, (socket.gethostname(), own_cpu))
    here = socket.gethostname()
    siblings = sum(t for host, t in peers if host == here) - own_cpu
    if c.share is not None and wall > 0:
        c.share = min(1.0, max(0.0, c.share - siblings / (wall * len(c.cpus))))
    return c.record()


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
