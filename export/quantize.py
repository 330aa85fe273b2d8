"""int8: onnxruntime static quantization in QDQ form, calibrated on training images (never the test set).

    python -m export lenet --int8                  # writes lenet.onnx and lenet.int8.onnx, verifies both
    >>> from export.quantize import quantize_int8, calibration_images
    >>> quantize_int8("artifacts/lenet.onnx", "artifacts/lenet.int8.onnx", calibration_images(train_split))

The quantized file keeps the fp32 file's contract: float32 `image` (normalised, as for fp32) in, float32
`logits` out; QuantizeLinear/DequantizeLinear pairs inside. Settings: S8S8 (int8 activations and weights), the
onnxruntime default and recommended choice for QDQ on CPU; per-channel weights; MinMax calibration.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from google.protobuf.message import DecodeError
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from export.common import INPUT_NAME, first_line, quiet_exporters
from export.integrity import SEAL_KEY, read_artifact, seal_onnx
from mnist_zoo.data import Split, normalize
from mnist_zoo.util import UserError, atomic_write

CALIBRATION_IMAGES = 1000  # from the training set; more changes the ranges by < 1% and costs seconds
CALIBRATION_BATCH = 100
CALIBRATION_SEED = 0
PER_CHANNEL = True
METHOD = CalibrationMethod.MinMax


def calibration_images(
    train_split: Split, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
) -> torch.Tensor:
    """`n` training images, drawn reproducibly (seeded), normalised float32 [n, 1, 28, 28]."""
    index = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(seed))[:n]
    return normalize(train_split.images[index])


class _Reader(CalibrationDataReader):
    """The calibration images, CALIBRATION_BATCH at a time, as onnxruntime's calibrator asks for them."""

    def __init__(self, images: torch.Tensor) -> None:
        arr = np.ascontiguousarray(images.detach().cpu().float().numpy())
        starts = range(0, len(arr), CALIBRATION_BATCH)
        self._batches = ({INPUT_NAME: arr[i : i + CALIBRATION_BATCH]} for i in starts)

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_int8(
    fp32_onnx_path: str | os.PathLike, out_path: str | os.PathLike, calibration_images: torch.Tensor
) -> Path:
    """Static QDQ int8 quantization of an fp32 export; written atomically, metadata carried over and sealed.

    calibration_images: normalised float32 [N, 1, 28, 28] training images (see calibration_images()); the
    same input the fp32 file takes. Returns out_path."""
    fp32_onnx_path = Path(fp32_onnx_path)
    if calibration_images.ndim != 4 or tuple(calibration_images.shape[1:]) != (1, 28, 28):
        raise UserError(f"calibration images must be [N, 1, 28, 28], got {list(calibration_images.shape)}")
    if calibration_images.dtype != torch.float32:
        raise UserError(f"calibration images must be normalised float32, got {calibration_images.dtype}")
    try:
        fp32 = onnx.load_from_string(read_artifact(fp32_onnx_path))
    except DecodeError as e:
        raise UserError(f"{fp32_onnx_path} is not a readable ONNX file ({first_line(e)})") from None
    # The intermediate files go beside the output (export's staging folder), on the disk it fills: a full disk
    # there is an OSError, reported as such, not a quantization failure.
    where = dict(prefix=f".int8.{os.getpid()}.", suffix=".tmp", dir=Path(out_path).parent)
    with tempfile.TemporaryDirectory(**where) as tmp, quiet_exporters():
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            # Shape inference and graph optimisation first, as onnxruntime's docs ask for static quantization.
            quant_pre_process(str(fp32_onnx_path), str(pre))
            quantize_static(
                str(pre),
                str(q),
                _Reader(calibration_images),
                quant_format=QuantFormat.QDQ,
                per_channel=PER_CHANNEL,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=METHOD,
                use_external_data_format=False,
            )
        except OSError:
            raise  # a full disk or another write error: the caller's to report
        except Exception as e:
            raise UserError(f"int8 quantization failed ({type(e).__name__}: {first_line(e)})") from None
        proto = onnx.load(str(q))
    # Carry the fp32 file's metadata (model, recipe, versions), then say what was done to it.
    del proto.metadata_props[:]
    for p in fp32.metadata_props:
        if p.key != SEAL_KEY:
            proto.metadata_props.add(key=p.key, value=p.value)
    proto.doc_string = fp32.doc_string + " int8 QDQ (onnxruntime static quantization)."
    seal_onnx(
        proto,
        {
            "quantization": "int8 static QDQ (onnxruntime)",
            "onnxruntime_version": onnxruntime.__version__,
            "quant_activation": "QInt8",
            "quant_weight": "QInt8",
            "quant_per_channel": PER_CHANNEL,
            "calibration": f"{len(calibration_images)} training images, {METHOD.name}",
            "fp32_source": fp32_onnx_path.name,
        },
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"onnx.checker rejected the int8 model: {first_line(e)}") from None
    return atomic_write(out_path, lambda tmp: onnx.save_model(proto, tmp, save_as_external_data=False))
