"""What is particular to torchrun: noticing the launch, the process group, and the ranks' share of each batch.

    torchrun --nproc-per-node 2 -m mnist_zoo train lenet              # 2 processes here (gloo on CPUs)
    torchrun --nproc-per-node 4 -m mnist_zoo train lenet --device cuda # one process per GPU (NCCL)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 \\
        -m mnist_zoo train lenet                                       # on each of 2 machines

`train` notices torchrun (its RANK and WORLD_SIZE variables) and runs the zoo's one training loop (train.py)
with `Ranks` in place of one process: every rank draws the same batches from the same seeded permutation and
takes its shard of each (train.ShardGradient), so the global batch is the recipe's batch and the recipe means
what it means on one process. Rank 0 evaluates, shows progress and saves the checkpoint (fit.py); the record
says the world size, the backend and the nodes (each torchrun agent's host, node rank and ranks). Each rank uses
its CPUs' share of threads (--threads sets it) and plain steps: the shards are the slices that one process cuts
on its own.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mnist_zoo import cpu
from mnist_zoo.launch import is_main as is_main  # rank 0 (or no torchrun) evaluates, prints and saves
from mnist_zoo.train import OneProcess, ShardGradient


def launched() -> bool:
    """Whether this process is one rank of a torchrun launch (torchrun sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def default_threads() -> int:
    """This machine's CPUs shared among the ranks torchrun started on it."""
    return max(1, math.floor(cpu.available() / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: on CUDA, the GPU of its local rank (made current)."""
    if device.type != "cuda":
        return device
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """The ranks of this launch, joined in a process group (NCCL on GPUs, gloo on CPUs) for the block."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        yield Ranks(device, backend)
    finally:
        dist.destroy_process_group()


class Ranks(OneProcess):
    """The processes of a torchrun launch, as train() sees them: each trains its shard of every batch, and the
    decisions that stop or go on are taken alike on all (so none is left waiting in a collective)."""

    def __init__(self, device: torch.device, backend: str) -> None:
        self.device, self.backend = device, backend
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # Where each rank runs: its host and its agent's node rank (torchrun's GROUP_RANK). Two agents on one
        # machine share a host but not a node rank, so the node rank is what tells the nodes apart.
        self.places: list = [None] * self.world
        dist.all_gather_object(self.places, (socket.gethostname(), int(os.environ.get("GROUP_RANK", "0"))))

    def gradient(self, model: nn.Module, streams: int) -> ShardGradient:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return ShardGradient(DistributedDataParallel(model, device_ids=ids), self.rank, self.world)

    def all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.tensor([float(torch.isfinite(value))], device=value.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def epoch_totals(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> tuple:
        totals = torch.stack(
            [loss.double(), correct.double(), torch.tensor(images, dtype=torch.float64, device=loss.device)]
        )
        dist.all_reduce(totals)
        return totals[0], totals[1], totals[2]

    def main_says(self, *flags: bool) -> tuple[bool, ...]:
        said = torch.tensor([float(f) for f in flags], device=self.device)
        dist.broadcast(said, src=0)
        return tuple(bool(f) for f in said.tolist())

    def contention(self, c: cpu.Contention) -> dict:
        """c.record() with the other ranks on this machine not counted as other processes: they are this run."""
        peers: list = [None] * self.world
        dist.all_gather_object(peers, (socket.gethostname(), c.own_seconds))
        here = socket.gethostname()
        siblings = sum(t for host, t in peers if host == here) - c.own_seconds
        if c.share is not None and c.wall > 0:
            c.share = min(1.0, max(0.0, c.share - siblings / (c.wall * len(c.cpus))))
        return c.record()

    def record(self) -> dict:
        nodes = {
            place: [r for r, p in enumerate(self.places) if p == place] for place in sorted(set(self.places))
        }
        nodes = [{"host": host, "node_rank": node, "ranks": ranks} for (host, node), ranks in nodes.items()]
        return {"world_size": self.world, "backend": self.backend, "nodes": nodes}
