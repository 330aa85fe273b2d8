"""The export formats, one table for `python -m export` and the benchmark: their names, file suffixes, labels.

    >>> from export.formats import FORMATS
    >>> FORMATS["onnx-int8"].suffix
    '.int8.onnx'

A format's name is what export's JSON records say (`"format"`) and what bench/runtimes.py asks for; the flag
that writes it is export's (--onnx, --int8, --torchscript, --pt2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # the file is <model><suffix>
    label: str  # as the tables name it
    onnx: bool  # an ONNX file, run by onnxruntime (and OpenVINO)


FORMATS = {
    f.name: f
    for f in (
        Format("onnx", ".onnx", "ONNX", onnx=True),
        Format("onnx-int8", ".int8.onnx", "ONNX int8", onnx=True),  # static QDQ int8, made from the .onnx
        Format("torchscript", ".pt", "TorchScript", onnx=False),
        Format("pt2", ".pt2", "torch.export", onnx=False),
    )
}
