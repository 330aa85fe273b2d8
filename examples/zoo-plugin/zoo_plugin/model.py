"""resnet8: a small residual network, as an mnist-zoo model plugin.

    python -m mnist_zoo train resnet8 --json    # its own recipe (RECIPE): 99.47% test accuracy (seed 0)

Why this family: every zoo model is a plain chain of layers (an nn.Sequential). A residual network adds each
block's input to its output (He et al., 2015), the skip connection every vision model since builds on. Its
graph is no longer a chain (ONNX Add nodes joining two branches, a 1x1 projection where the shape changes), so
it carries the suite's export verification and runtimes through something other than a stack of layers, and
its forward is a method of its own, not Sequential's.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_zoo.models import model_plugin
from mnist_zoo.recipes import Recipe

# Nesterov SGD, one-cycle with a 15% warm-up, 8 epochs at batch 128, the digits randomly rotated, shifted and
# scaled (mnist_zoo/augment.py) except in the last epoch, as the zoo's cnn trains: BatchNorm after every
# convolution lets lr 0.1 train from the start. Seeds 0 and 1: 99.47% and 99.37% test accuracy (seed 0 without
# the warps: 99.40%; 5 plain epochs: 99.15%). TARGET is the bar it must clear.
RECIPE = Recipe(
    "default", epochs=8, batch_size=128, lr=0.1, optimizer="nesterov", momentum=0.9, weight_decay=5e-4,
    schedule="onecycle", warmup=0.15, augment=True, plain_epochs=1,
)  # fmt: skip
TARGET = 0.993


class Residual(nn.Module):
    """Two 3x3 conv-BatchNorm layers whose output is added to the block's input (projected by a strided 1x1
    convolution where the channels or the size change), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),  # no bias: the BatchNorm has its own shift
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        same = c_in == c_out and stride == 1
        self.skip = (
            nn.Identity()
            if same
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


@model_plugin(
    "resnet8",
    "residual: conv 16, pool, 2 residual blocks (16, 32 stride 2), global average pool, fc 32->10",
    channels_last=True,  # oneDNN's convolutions prefer it, as for the zoo's convolutional models
    recipe=RECIPE,
    target=TARGET,
)
def resnet8() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # 28 -> 14
        Residual(16, 16),
        Residual(16, 32, stride=2),  # 14 -> 7
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
