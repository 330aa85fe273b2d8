"""TorchScript (.pt): the format C++ serving loads through libtorch's `torch::jit::load`.

    python -m export lenet --torchscript                       # artifacts/lenet.pt and lenet.pt.sha256
    >>> from export.to_torchscript import export_torchscript, load_torchscript
    >>> export_torchscript(model, "artifacts/lenet.pt")
    >>> module, meta = load_torchscript("artifacts/lenet.pt")    # checks the file's SHA-256, then the weights

TorchScript is deprecated upstream from torch 2.11 (export.to_pt2 writes its successor, torch.export) but is
still what C++ reads, so it is kept working and its FutureWarnings are kept out of the user's face
(export.common.quiet_exporters). The input contract of every artifact: `image` float32 [batch, 1, 28, 28],
normalised; returns logits [batch, 10] (a tuple (logits, probabilities) with softmax=True). The archive carries
"mnist_zoo.json" (metadata and a digest of the weights), which load_torchscript checks.

A TorchScript file holds code, and torch.jit.load runs some of it (a scripted __setstate__) while loading. So
load_torchscript first checks the SHA-256 of the whole file against the caller's digest or NAME.sha256 beside
it (export.integrity.read_verified), and torch.jit.load only ever sees the bytes that matched. Load files from
elsewhere the same way: with a digest you got from whoever you trust to have made them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

from export.common import archive_metadata, first_line, prepare, quiet_exporters
from export.integrity import EXTRA_FILE, check_extra_file, extra_file, read_verified, write_with_digest
from mnist_zoo.util import UserError


def export_torchscript(
    model: nn.Module, path: str | os.PathLike, *, softmax: bool = False, metadata: dict | None = None
) -> Path:
    """torch.jit.script the model (scripting, not tracing: nothing input-dependent is baked in) and save it,
    atomically, with metadata and a weights digest in the archive's extra file, and NAME.sha256 beside it."""
    with quiet_exporters():
        try:
            scripted = torch.jit.script(prepare(model, softmax))
        except Exception as e:
            raise UserError(f"TorchScript export failed ({type(e).__name__}: {first_line(e)})") from None
        meta = archive_metadata(metadata, "torchscript", softmax)
        extra = {EXTRA_FILE: extra_file(meta, scripted.state_dict())}
        # Into memory, then written by Python: a full disk is then an OSError the CLI reports in one line (C++'s
        # file writer fails with a RuntimeError and leaves a partial file).
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files=extra)
    return write_with_digest(path, buffer.getvalue())


def load_torchscript(
    path: str | os.PathLike, *, sha256: str | None = None
) -> tuple[torch.jit.ScriptModule, dict]:
    """(module in eval mode, metadata); UserError for a missing, damaged or modified file. `sha256`: the digest
    the whole file must have (default: the one in NAME.sha256 beside it), checked before torch.jit.load."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no TorchScript file at {path}")
    data = read_verified(path, sha256)
    extra = {EXTRA_FILE: ""}
    with quiet_exporters():
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
        except Exception as e:  # zip, pickle and TorchScript parse errors all end here
            raise UserError(f"{path} is not a readable TorchScript file ({first_line(e)})") from None
    meta = check_extra_file(extra[EXTRA_FILE], module.state_dict(), path)
    return module.eval(), meta
