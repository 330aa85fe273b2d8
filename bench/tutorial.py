"""The tutorial's input pipeline, kept as the reference row that the zoo's speed is measured against.

    python -m bench.tutorial --batches 200     # measure its training throughput on this machine

What it reproduces: torchvision's MNIST dataset with per-sample PIL -> ToTensor -> Normalize transforms, fed
by a DataLoader with 4 worker processes and batch 32, into SGD lr 0.1. What it does not copy: the tutorial's
Softmax before CrossEntropyLoss (we train on logits here too, so the comparison is of the pipeline alone) and
its "testing accuracy" measured on the training set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mnist_zoo.data import MEAN, SPLITS, STD, fetch
from mnist_zoo.models import get_model, list_models
from mnist_zoo.util import guarded, out

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


def measure(model_name: str = "lenet", batches: int = 200, data_dir: str | None = None) -> dict:
    """Train `batches` steps through the tutorial pipeline after WARMUP steps; the rate covers the pipeline
    end to end (workers decoding PIL images included), which is what a tutorial user waits for."""
    step, close = stepper(model_name, data_dir)
    try:
        for _ in range(WARMUP):
            step()
        t0 = time.perf_counter()
        images = sum(step() for _ in range(batches))
        seconds = time.perf_counter() - t0
    finally:
        close()
    return {"model": model_name, "images": images, "seconds": seconds, "images_per_second": images / seconds}


def main(argv: list[str] | None = None) -> int:
    description = __doc__.split("\n\n")[0]
    example = "example: python -m bench.tutorial --model lenet --batches 200"
    p = argparse.ArgumentParser(prog="python -m bench.tutorial", description=description, epilog=example)
    p.add_argument("--model", default="lenet", choices=list_models())
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    r = measure(args.model, args.batches, args.data_dir)
    threads = torch.get_num_threads()
    rate = f"tutorial pipeline, {r['model']}: {r['images_per_second']:.0f} images/s"
    how = f"{r['images']} images in {r['seconds']:.1f} s, {WORKERS} workers, {threads} threads"
    out.print(f"{rate} ({how})", soft_wrap=True)  # one line, however narrow the terminal
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
