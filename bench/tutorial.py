"""The tutorial's input pipeline, kept as the reference row that the zoo's speed is measured against.

    pytest --benchmark-only -k tutorial         # its training throughput, beside the zoo's, on this machine

What it reproduces: torchvision's MNIST dataset with per-sample PIL -> ToTensor -> Normalize transforms, fed
by a DataLoader with 4 worker processes and batch 32, into SGD lr 0.1. What it does not copy: the tutorial's
Softmax before CrossEntropyLoss (we train on logits here too, so the comparison is of the pipeline alone) and
its "testing accuracy" measured on the training set.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mnist_zoo.data import MEAN, SPLITS, STD, fetch
from mnist_zoo.models import get_model

BATCH_SIZE, WORKERS, LR = 32, 4, 0.1
WARMUP = 20  # steps not timed: worker start-up and the first batches' prefetch are not the steady rate


def _torchvision_root(data_dir: str | None) -> Path:
    """torchvision's MNIST wants <root>/MNIST/raw/<files>: link the verified files into such a tree."""
    source = fetch(data_dir)
    root = Path(tempfile.gettempdir()) / "mnist-zoo-tutorial"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for images, labels, _ in SPLITS.values():
        for name in (images, labels):
            link = raw / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to((source / name).resolve())
    return root


def tutorial_loader(data_dir: str | None = None, seed: int = 0) -> DataLoader:
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = datasets.MNIST(_torchvision_root(data_dir), train=True, download=False, transform=transform)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=WORKERS, generator=generator)


def stepper(
    model_name: str = "lenet", data_dir: str | None = None, seed: int = 0
) -> tuple[Callable[[], int], Callable[[], None]]:
    """(step, close): step() trains one batch through the tutorial pipeline (waiting on the workers included)
    and returns its size; close() stops the workers. For timing step by step (the benchmark's raw samples)."""
    torch.manual_seed(seed)
    model = get_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    it = iter(tutorial_loader(data_dir, seed))

    def step() -> int:
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(y)

    def close() -> None:
        nonlocal it
        # Stop the workers now rather than whenever the iterator is garbage-collected.
        getattr(it, "_shutdown_workers", lambda: None)()
        it = None

    return step, close
