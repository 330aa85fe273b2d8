"""Geometric changes to whole batches of digits on their device: training augmentation and the robustness test.

    python -m mnist_zoo evaluate cnn                  # accuracy, then accuracy under each perturbation below
    >>> from mnist_zoo.augment import random_affine, robustness
    >>> x = random_affine(train.images[:256].float(), torch.Generator().manual_seed(0))  # [256, 28, 28] float
    >>> robustness(model, test.images, test.labels)   # {"rotate ±15°": 0.99, ..., "mean": 0.98}

One batched warp for every image (affine_grid + grid_sample) instead of a PIL call per image, on the training
device: a few batched kernels, a small part of a cnn training step. Images stay on
the 0-255 scale and the warp pads with 0, MNIST's background, so normalisation comes after it, as for clean ones.

The robustness test is the perturbations a drawing pad produces: a digit drawn tilted, off-centre, larger or
smaller, with a thicker or thinner pen. Each is drawn once per test image from a fixed seed, so every model
and every run is scored on the same perturbed images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnist_zoo.data import normalize

# Training augmentation of the default cnn recipe: rotation up to ±ROTATE degrees, shift up to ±SHIFT pixels on
# each axis, scale by 1 ± SCALE, each drawn uniformly per image. Chosen on held-out data (README, "Recipes").
ROTATE, SHIFT, SCALE = 10.0, 2.0, 0.1
ROBUSTNESS_SEED = 0


def affine(
    images: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """images float [N, 28, 28] (0-255) rotated by `angle` degrees [N], shifted by `shift` pixels [N, 2] (x, y)
    and scaled by `scale` [N] about the centre; bilinear, padded with the background (0)."""
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    # affine_grid maps output to input coordinates in [-1, 1]: the inverse warp, and 2 / 28 per pixel.
    t = -shift * (2 / images.shape[-1])
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    x = images.unsqueeze(1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(1)


def _uniform(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniform in [-1, 1), drawn from `gen` on the CPU."""
    return torch.rand(*shape, generator=gen) * 2 - 1


def random_affine(
    images: torch.Tensor,
    gen: torch.Generator,
    rotate: float = ROTATE,
    shift: float = SHIFT,
    scale: float = SCALE,
) -> torch.Tensor:
    """A random rotation, shift and scale per image, drawn from `gen` (a CPU generator: the same draws on every
    device, so a seed means the same augmentation on a CPU and on a GPU)."""
    n = len(images)
    return affine(
        images, _uniform(gen, n) * rotate, _uniform(gen, n, 2) * shift, 1 + _uniform(gen, n) * scale
    )


def _pen(images: torch.Tensor, thicker: bool) -> torch.Tensor:
    """Grey-scale dilation (thicker strokes) or erosion (thinner) with a 2x2 pen: about a pixel of stroke width."""
    x = images.unsqueeze(1)
    if not thicker:
        x = -x
    x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=x.min().item()), 2, stride=1)
    return (x if thicker else -x).squeeze(1)


def perturbations(images: torch.Tensor, seed: int = ROBUSTNESS_SEED) -> dict[str, torch.Tensor]:
    """name -> the test images under that perturbation (float, 0-255), drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    n, x = len(images), images.float()
    zero, one = torch.zeros(n), torch.ones(n)
    return {
        "rotate ±15°": affine(x, _uniform(gen, n) * 15, torch.zeros(n, 2), one),
        "shift ±2 px": affine(x, zero, _uniform(gen, n, 2) * 2, one),
        "scale ±15%": affine(x, zero, torch.zeros(n, 2), 1 + _uniform(gen, n) * 0.15),
        "thicker pen": _pen(x, thicker=True),
        "thinner pen": _pen(x, thicker=False),
    }


@torch.no_grad()
def robustness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> dict:
    """Test accuracy of `model` under each perturbation, and their mean: {"rotate ±15°": 0.98, ..., "mean": ...}."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = {}
    for name, perturbed in perturbations(images.cpu()).items():
        correct = 0
        for i in range(0, len(labels), batch_size):
            x = normalize(perturbed[i : i + batch_size].to(device))
            correct += (model(x).argmax(1) == labels[i : i + batch_size].to(device)).sum().item()
        scores[name] = correct / len(labels)
    model.train(was_training)
    scores["mean"] = math.fsum(scores.values()) / len(scores)
    return scores
