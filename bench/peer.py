"""The fastest peer recipe we know for MNIST on one device, kept as the reference row for lenet's time to 99%.

    pytest --benchmark-only -k peer             # its one-epoch training time and accuracy, on this machine
    pytest --benchmark-only -k peer --bench-precision fp32,bf16     # and under bfloat16 autocast

What it reproduces, from the description of the final notebook of the train_mnist_fast repository (no code of
it is copied): conv 1->24 k5, maxpool 2, ReLU, conv 24->32 k3, maxpool 2, ReLU, fc 800->256, ReLU, fc 256->10;
Adam lr 1e-2 with betas (0.7, 0.9) under a one-cycle schedule without momentum cycling; batch 256; one epoch
over the dataset held as one tensor, in file order (no shuffling). It reported 99.04% ± 0.07 in 0.76 s on a
laptop GPU. Here it gets what the zoo's lenet gets: the data path (the uint8 tensor, normalised slice by
slice), the channels-last memory format on a CPU (10-25% faster for it here), the same thread count and the same
precision (each step's forward pass and loss under the same autocast, precision.py), so the two differ by
recipe and model alone.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from mnist_zoo.data import Split, normalize
from mnist_zoo.precision import Chosen, autocast
from mnist_zoo.train import evaluate

BATCH_SIZE, LR, BETAS = 256, 1e-2, (0.7, 0.9)
FP32 = Chosen("fp32", "fp32: asked for")


def peer_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 24, kernel_size=5),  # 28 -> 24
        nn.MaxPool2d(2),  # 24 -> 12
        nn.ReLU(),
        nn.Conv2d(24, 32, kernel_size=3),  # 12 -> 10
        nn.MaxPool2d(2),  # 10 -> 5, so 32 * 5 * 5 = 800 features
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(800, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def train_peer(
    train_split: Split, test_split: Split, seed: int = 0, precision: Chosen = FP32
) -> tuple[float, float]:
    """(training seconds, test accuracy) of the peer recipe's one epoch at `precision` (precision.choose).
    Evaluation is not timed."""
    torch.manual_seed(seed)
    model = peer_model().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)
    steps = -(-len(train_split) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, cycle_momentum=False)
    start = time.perf_counter()
    for i in range(0, len(train_split), BATCH_SIZE):
        x, y = normalize(train_split.images[i : i + BATCH_SIZE]), train_split.labels[i : i + BATCH_SIZE]
        with autocast(precision, "cpu"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    seconds = time.perf_counter() - start
    return seconds, evaluate(model, test_split).accuracy
