"""The zoo: the three architectures of the classic tutorial, a small modern CNN, and a registry in torchvision's
style.

    python -m mnist_zoo list                      # the zoo as a table
    >>> from mnist_zoo.models import get_model, list_models
    >>> list_models()
    ['mlp', 'dnn', 'lenet', 'cnn']
    >>> get_model("lenet")(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])

Every model takes normalised images [N, 1, 28, 28] (see data.normalize) and returns logits [N, 10]: the softmax
belongs to prediction time, and CrossEntropyLoss applies its own log-softmax (the tutorial's Softmax layer before
CrossEntropyLoss is a double softmax that slows and weakens training).

`cnn` is not the tutorial's: it is the zoo's answer to "what would I deploy today", BatchNorm after every
convolution and trained on randomly rotated, shifted and scaled digits (augment.py), which is what makes it
the model to put behind a drawing pad. Exporters fold its BatchNorms into the convolutions (export/common.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mnist_zoo.util import UserError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[[], nn.Module]
    description: str
    params: int
    macs: int  # multiply-adds per image, forward pass
    # Train in channels-last memory format on a CPU: oneDNN's convolutions prefer it (docs/benchmarks.md).
    channels_last: bool = False


_REGISTRY: dict[str, ModelInfo] = {}


def count_macs(model: nn.Module) -> int:
    """Multiply-adds of one forward pass of one image, counted on the layers that do them (conv, linear)."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return macs


def register_model(name: str, description: str, channels_last: bool = False) -> Callable:
    """Decorator: add a model builder to the zoo under `name`; a name already in the zoo is a ValueError (as in
    torchvision's registry), never a silent replacement."""

    def wrap(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"a model is already registered under the name {name!r}")
        model = builder()
        params = sum(p.numel() for p in model.parameters())
        _REGISTRY[name] = ModelInfo(name, builder, description, params, count_macs(model), channels_last)
        return builder

    return wrap


def list_models() -> list[str]:
    """Model names in registration order: the tutorial's order, fewest multiply-adds first."""
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return _REGISTRY[name]


def get_model(name: str) -> nn.Module:
    """A freshly initialised model (seed torch first for a reproducible start)."""
    return model_info(name).builder()


@register_model("mlp", "softmax regression: 784 -> 10")
def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


@register_model("dnn", "one hidden layer: 784 -> 100 -> ReLU -> 10")
def dnn() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(inplace=True), nn.Linear(100, 10))


@register_model("lenet", "conv 1->10 k5, pool, conv 10->20 k5, pool, fc 320->100->10", channels_last=True)
def lenet() -> nn.Module:
    # The tutorial's conv, ReLU, max-pool with the last two swapped: the max of ReLUs is the ReLU of the max, so
    # outputs and gradients are the same to the bit (tested), but the ReLU and its backward touch a quarter of
    # the values (docs/benchmarks.md has the speed-up). The parameters keep their names (0, 3, 7, 9).
    # In-place ReLUs: a layer's output is not needed for its own backward pass, so overwriting it saves an
    # allocation per step.
    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5),  # 28 -> 24
        nn.MaxPool2d(2),  # 24 -> 12
        nn.ReLU(inplace=True),
        nn.Conv2d(10, 20, kernel_size=5),  # 12 -> 8
        nn.MaxPool2d(2),  # 8 -> 4, so 20 * 4 * 4 = 320 features
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(320, 100),
        nn.ReLU(inplace=True),
        nn.Linear(100, 10),
    )


def _stage(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own shift, and would cancel any bias. Max-pool before
    # ReLU, as in lenet: the same values, and the ReLU works on a quarter of them.
    return [
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    ]


@register_model(
    "cnn",
    "3 x conv-BatchNorm-ReLU (16 k5, 32 k3, 64 k3), each max-pooled; fc 576->10",
    channels_last=True,
)
def cnn() -> nn.Module:
    # Three conv-BatchNorm-ReLU stages, each halving the image with a max-pool (28 -> 14 -> 7 -> 3); the "same"
    # padding keeps the digit's edges in play for the shifted and rotated training images.
    return nn.Sequential(
        *_stage(1, 16, 5),  # 28 -> 14
        *_stage(16, 32, 3),  # 14 -> 7
        *_stage(32, 64, 3),  # 7 -> 3, so 64 * 3 * 3 = 576 features
        nn.Flatten(),
        nn.Linear(576, 10),
    )
