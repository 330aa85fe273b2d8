"""ONNX export with the torch.onnx dynamo exporter (torch.export -> onnxscript), one self-contained file.

    python -m export lenet --onnx                        # the command line (trains, exports, verifies)
    >>> from export.to_onnx import export_onnx
    >>> export_onnx(model, "artifacts/lenet.onnx", metadata={"model": "lenet"})

The file: input `image` float32 [batch, 1, 28, 28] normalised as (pixel/255 - 0.1307) / 0.3081 (normalisation
is not in the graph), dynamic batch axis; output `logits` [batch, 10] (and `probabilities` with softmax=True).
Weights are stored inside the file (no external data), onnx.checker passes (full check, with shape inference),
metadata_props carry what it is and where it came from, and a SHA-256 seal lets export.verify.ort_session
refuse a file changed after export.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxscript
import torch
from torch import nn

from export.common import (
    INPUT_NAME,
    NORMALISATION,
    OUTPUT_NAME,
    PROBS_NAME,
    batch_dim,
    example_input,
    first_line,
    prepare,
    quiet_exporters,
)
from export.integrity import seal_onnx
from mnist_zoo.data import MEAN, STD
from mnist_zoo.util import UserError, atomic_write

# The exporter's recommended opset: what torch.onnx uses when none is given (20 in torch 2.14).
DEFAULT_OPSET: int = torch.onnx._constants.ONNX_DEFAULT_OPSET
# The exporter builds opset 18 and moves to any other with onnx's version converter. For these graphs that
# works up to the newest opset the installed onnx knows and down to 15; below 15 the converter has no adapter
# for Shape, and the exporter would quietly write opset 18 instead (export_onnx refuses that too).
MIN_OPSET = 15
MAX_OPSET: int = onnx.defs.onnx_opset_version()


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(
            f"the exporter cannot produce opset {opset} for these models; choose {MIN_OPSET} to {MAX_OPSET} "
            f"(default {DEFAULT_OPSET})"
        )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    softmax: bool = False,
    metadata: dict | None = None,
) -> Path:
    """Export `model` (a zoo model taking normalised images) to one ONNX file at `path`, atomically.

    opset None = the exporter's recommended one (DEFAULT_OPSET); an opset it cannot produce is a UserError.
    `metadata` (model, seed, recipe, test accuracy...) is stored as metadata_props "mnist_zoo.<key>" beside
    the exporter's versions and the normalisation."""
    opset = DEFAULT_OPSET if opset is None else opset
    check_opset(opset)
    with quiet_exporters() as warned:
        try:
            program = torch.onnx.export(
                prepare(model, softmax),
                (example_input(),),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME, PROBS_NAME] if softmax else [OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: batch_dim()}},
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        except Exception as e:  # the exporter raises many types; each is one line for the user
            raise UserError(f"ONNX export failed ({type(e).__name__}: {first_line(e)})") from None
    proto = program.model_proto
    got = {i.domain: i.version for i in proto.opset_import}.get("")
    if got != opset:
        # The exporter goes on at another opset when conversion fails: an error here, not a warning.
        why = next((w for w in reversed(warned) if "version" in w.lower()), "")
        cause = why.rsplit(": ", 1)[-1].rstrip(")") if why.endswith(")") else "version conversion failed"
        raise UserError(
            f"the exporter could not produce opset {opset}: onnx's version converter failed "
            f"({cause[:120]}); it would have written opset {got}"
        )
    proto.producer_name = "mnist-zoo export (torch.onnx dynamo)"
    proto.doc_string = (
        f"mnist-zoo model. Input '{INPUT_NAME}': {NORMALISATION}. Output '{OUTPUT_NAME}': "
        "float32 [batch,10] logits" + (f"; '{PROBS_NAME}': their softmax." if softmax else ".")
    )
    exporter = {
        "exporter": f"torch.onnx dynamo {torch.__version__}, onnxscript {onnxscript.__version__}",
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxscript_version": onnxscript.__version__,
        "opset": opset,
        "input": INPUT_NAME,
        "normalisation": NORMALISATION,
        "mean": MEAN,
        "std": STD,
        "softmax": softmax,
    }
    seal_onnx(proto, {**(metadata or {}), **exporter})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"onnx.checker rejected the export: {first_line(e)}") from None
    # Weights inside the file: these models are < 1 MB, and one file is what the docs promise.
    return atomic_write(path, lambda tmp: onnx.save_model(proto, tmp, save_as_external_data=False))
