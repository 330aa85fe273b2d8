"""torch.export (.pt2): the successor of TorchScript, an ahead-of-time graph with a dynamic batch axis.

    python -m export lenet --pt2                       # artifacts/lenet.pt2 and lenet.pt2.sha256
    >>> from export.to_pt2 import export_pt2, load_pt2
    >>> export_pt2(model, "artifacts/lenet.pt2")
    >>> module, meta = load_pt2("artifacts/lenet.pt2")   # checks the file's SHA-256, then the weights

The input contract of every artifact: `image` float32 [batch, 1, 28, 28], normalised; returns logits
[batch, 10] (a tuple (logits, probabilities) with softmax=True). The archive carries "mnist_zoo.json"
(metadata and a digest of the weights), which load_pt2 checks.

A .pt2 archive is unpickled and may hold custom objects and code, so, as for TorchScript, load_pt2 checks the
SHA-256 of the whole file (the caller's digest, else NAME.sha256 beside it) before torch.export.load sees its
bytes (export.integrity.read_verified).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

from export.common import (
    INPUT_NAME,
    archive_metadata,
    batch_dim,
    example_input,
    first_line,
    prepare,
    quiet_exporters,
)
from export.integrity import EXTRA_FILE, check_extra_file, extra_file, read_verified, write_with_digest
from mnist_zoo.util import UserError


def export_pt2(
    model: nn.Module, path: str | os.PathLike, *, softmax: bool = False, metadata: dict | None = None
) -> Path:
    """torch.export the model with a dynamic batch axis and torch.export.save it (.pt2), atomically, with
    NAME.sha256 beside it."""
    dynamic = {INPUT_NAME: {0: batch_dim()}}
    with quiet_exporters():
        try:
            program = torch.export.export(prepare(model, softmax), (example_input(),), dynamic_shapes=dynamic)
        except Exception as e:
            raise UserError(f"torch.export failed ({type(e).__name__}: {first_line(e)})") from None
        meta = archive_metadata(metadata, "torch.export", softmax)
        extra = {EXTRA_FILE: extra_file(meta, program.state_dict)}
        # Into memory, then written by Python (as TorchScript): a full disk is an OSError, reported in one line.
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files=extra)
    return write_with_digest(path, buffer.getvalue())


def load_pt2(path: str | os.PathLike, *, sha256: str | None = None) -> tuple[nn.Module, dict]:
    """(callable module, metadata) from a .pt2 file; UserError for a missing, damaged or modified file.
    `sha256`: the digest the whole file must have (default: NAME.sha256's), checked before torch.export.load."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no torch.export file at {path}")
    data = read_verified(path, sha256)
    extra = {EXTRA_FILE: ""}
    with quiet_exporters():
        try:
            program = torch.export.load(io.BytesIO(data), extra_files=extra)
        except Exception as e:
            raise UserError(f"{path} is not a readable torch.export file ({first_line(e)})") from None
    meta = check_extra_file(extra[EXTRA_FILE], program.state_dict, path)
    return program.module(), meta
