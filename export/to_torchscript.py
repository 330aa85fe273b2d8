"""TorchScript (.pt, for C++ serving through libtorch) and torch.export (.pt2, its successor) artifacts.

    python -m export lenet --torchscript --pt2
    >>> from export.to_torchscript import export_torchscript, export_pt2, load_torchscript
    >>> export_torchscript(model, "artifacts/lenet.pt")
    >>> module, meta = load_torchscript("artifacts/lenet.pt")    # checks the weights digest

TorchScript is deprecated upstream from torch 2.11 but is still what `torch::jit::load` in C++ reads, so it is
kept working and its FutureWarnings are kept out of the user's face (export.common.quiet_exporters). The same
input contract as the ONNX file: `image` float32 [batch, 1, 28, 28], normalised; returns logits [batch, 10]
(a tuple (logits, probabilities) with softmax=True). Both archives carry "mnist_zoo.json" (metadata and a
digest of the weights) that the loaders here check.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from export.common import (
    INPUT_NAME,
    NORMALISATION,
    batch_dim,
    example_input,
    prepare,
    quiet_exporters,
)
from export.integrity import EXTRA_FILE, check_extra_file, extra_file
from mnist_zoo.util import UserError, atomic_write


def _metadata(metadata: dict | None, fmt: str, softmax: bool) -> dict:
    return {
        **(metadata or {}),
        "format": fmt,
        "torch_version": torch.__version__,
        "input": INPUT_NAME,
        "normalisation": NORMALISATION,
        "softmax": softmax,
    }


def export_torchscript(
    model: nn.Module, path: str | os.PathLike, *, softmax: bool = False, metadata: dict | None = None
) -> Path:
    """torch.jit.script the model (scripting, not tracing: nothing input-dependent is baked in) and save it,
    atomically, with metadata and a weights digest in the archive's extra file."""
    wrapped = prepare(model, softmax)
    with quiet_exporters():
        try:
            scripted = torch.jit.script(wrapped)
        except Exception as e:
            raise UserError(
                f"TorchScript export failed ({type(e).__name__}: {str(e).strip()[:200]})"
            ) from None
        extra = {EXTRA_FILE: extra_file(_metadata(metadata, "torchscript", softmax), scripted.state_dict())}
        return atomic_write(path, lambda tmp: torch.jit.save(scripted, str(tmp), _extra_files=extra))


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict]:
    """(module in eval mode, metadata); UserError for a missing, damaged or modified file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no TorchScript file at {path}")
    extra = {EXTRA_FILE: ""}
    with quiet_exporters():
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:  # zip, pickle and TorchScript parse errors all end here
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{path} is not a readable TorchScript file ({first[:120]})") from None
    meta = check_extra_file(extra[EXTRA_FILE], module.state_dict(), path)
    return module.eval(), meta


def export_pt2(
    model: nn.Module, path: str | os.PathLike, *, softmax: bool = False, metadata: dict | None = None
) -> Path:
    """torch.export the model with a dynamic batch axis and torch.export.save it (.pt2), atomically."""
    wrapped = prepare(model, softmax)
    with quiet_exporters():
        try:
            program = torch.export.export(
                wrapped, (example_input(),), dynamic_shapes={INPUT_NAME: {0: batch_dim()}}
            )
        except Exception as e:
            raise UserError(f"torch.export failed ({type(e).__name__}: {str(e).strip()[:200]})") from None
        extra = {EXTRA_FILE: extra_file(_metadata(metadata, "torch.export", softmax), program.state_dict)}

        def write(tmp: Path) -> None:
            with open(
                tmp, "wb"
            ) as f:  # a file object: torch.export.save insists on the .pt2 suffix for names
                torch.export.save(program, f, extra_files=extra)

        return atomic_write(path, write)


def load_pt2(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """(callable module, metadata) from a .pt2 file; UserError for a missing, damaged or modified file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no torch.export file at {path}")
    extra = {EXTRA_FILE: ""}
    with quiet_exporters():
        try:
            with open(path, "rb") as f:
                program = torch.export.load(f, extra_files=extra)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{path} is not a readable torch.export file ({first[:120]})") from None
    meta = check_extra_file(extra[EXTRA_FILE], program.state_dict, path)
    return program.module(), meta
