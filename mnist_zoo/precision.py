"""Precision: which one a run uses and why, and the autocast that applies it.

    python -m mnist_zoo train lenet --precision bf16     # bfloat16 autocast; weights and optimizer stay float32
    python -m mnist_zoo train lenet --precision auto     # bf16 where native and shown as accurate, else fp32
    >>> from mnist_zoo.precision import choose, autocast
    >>> chosen = choose("auto", "mlp", "cpu")            # Chosen(precision="bf16", reason="auto: bf16, ...")
    >>> with autocast(chosen, "cpu"):                    # around one step's forward pass and loss
    ...     loss = F.cross_entropy(model(x), y)

Why the training loop enters autocast itself, once per step and on the thread that runs the step, rather than
its caller around the whole loop: autocast keeps the low-precision copies it makes of the weights until the
outermost autocast block exits. Around a whole run, every step computes with the copies made at the first step
while the optimizer updates the float32 weights they were made from: the loss stays at ln 10 = 2.30 and
nothing is learnt. And autocast is per thread: the slices that train.py trains on pool threads would not see
a block entered on the main thread. So train() refuses to run inside an enclosing autocast
(check_no_enclosing_autocast) and applies the recipe's precision step by step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mnist_zoo.cpu import matrix_units
from mnist_zoo.util import UserError

# The models `auto` may train in bf16: those whose mean test accuracy over 3 seeds in bf16 is within
# BF16_TOLERANCE of their fp32 mean, measured with `evaluate --seeds 3` and `compare` (docs/recipes.md,
# "Precision": mlp 92.61% in bf16 against 92.60%, dnn 98.30% against 98.26%, cnn 99.59% against 99.58%). Not
# lenet: 98.89% against 99.28%.
BF16_TOLERANCE = 0.001
BF16_ACCURATE: frozenset[str] = frozenset({"mlp", "dnn", "cnn"})
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Chosen:
    precision: str  # fp32 | bf16 | fp16 (asked for bf16 on a GPU without it: float16 with a gradient scaler)
    reason: str

    def record(self) -> dict:
        return {"precision": self.precision, "precision_reason": self.reason}


def native_bf16(device: torch.device | str) -> str | None:
    """Why `device` computes bfloat16 natively (its units, in words), or None when it does not."""
    device = torch.device(device)
    if device.type == "cuda":
        return (
            f"{torch.cuda.get_device_name(device)} supports bf16" if torch.cuda.is_bf16_supported() else None
        )
    if device.type == "cpu":
        units = matrix_units("bf16")
        return f"the CPU reports {' and '.join(units)}" if units else None
    return None


def choose(requested: str, model: str, device: torch.device | str) -> Chosen:
    """The precision a run of `model` on `device` uses when `requested` (fp32, bf16 or auto), and why."""
    device = torch.device(device)
    if requested == "fp32":
        return Chosen("fp32", "fp32: asked for")
    native = native_bf16(device)
    if requested == "bf16":
        if device.type == "cuda" and native is None:
            return Chosen("fp16", "bf16 asked for; this GPU has no bf16: fp16 with a gradient scaler")
        if native is None:
            return Chosen(
                "bf16", f"bf16: asked for; the {device.type} has no native bf16 units (slower than fp32)"
            )
        return Chosen("bf16", f"bf16: asked for; {native}")
    if native is None:
        return Chosen("fp32", f"auto: fp32, the {device.type} has no native bf16 units")
    if model not in BF16_ACCURATE:
        return Chosen("fp32", f"auto: fp32, bf16 not shown as accurate as fp32 for {model} (docs/recipes.md)")
    return Chosen("bf16", f"auto: bf16, {native}")


def autocast(chosen: Chosen, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context one step's forward pass and loss run in: torch.autocast to bf16 or fp16, or nothing."""
    if chosen.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[chosen.precision])


def check_no_enclosing_autocast(what: str = "training") -> None:
    """A one-line error when called inside an enabled torch.autocast block (see the module's docstring)."""
    on = [d for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
    if on:
        raise UserError(
            f"{what} was started inside torch.autocast({on[0]!r}): an enclosing autocast keeps stale low-precision "
            "copies of the weights, which then never learn; set the recipe's precision (bf16) instead"
        )
