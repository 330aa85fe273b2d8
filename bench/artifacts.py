"""The files the benchmark's runtimes load, made once per session from the model under test.

    >>> exports = Exports(tmp_dir, calibration=None)
    >>> exports.path("lenet", model, "onnx")          # exported on first use, then reused

A runtime that is absent here raises Unavailable with the reason (the benchmark's skip); a missing optional
package (OPTIONAL_PACKAGES) makes its runtimes absent, not broken.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from export.formats import FORMATS

OPTIONAL_PACKAGES = {"onnx", "onnxruntime", "onnxscript"}  # missing ones make a runtime absent, not broken
INSTALL_HINT = "pip install 'mnist-zoo[export]'"


class Unavailable(Exception):
    """This runtime cannot run on this machine; the message says why (it becomes the skip reason)."""


class Exports:
    """The files each runtime loads (checkpoint, TorchScript, ONNX fp32, ONNX int8), made on first use and
    reused for the session, so every row of a runtime measures the same file. `calibration` feeds the int8
    quantiser."""

    def __init__(self, directory: Path, calibration: torch.Tensor | None):
        self.directory, self.calibration = Path(directory), calibration
        self._paths: dict[tuple[str, str, str], Path] = {}

    def path(self, name: str, model: nn.Module, kind: str) -> Path:
        from export.integrity import weights_digest  # lazily: onnx may be absent, and its rows then skip

        # Keyed by the weights too: the same name may come trained or untrained.
        digest = weights_digest(model.state_dict())
        if (name, kind, digest) not in self._paths:
            self._paths[name, kind, digest] = self._make(name, model, kind, f"{name}-{digest[:12]}")
        return self._paths[name, kind, digest]

    def _make(self, name: str, model: nn.Module, kind: str, stem: str) -> Path:
        cpu_model = copy.deepcopy(model).cpu().eval()
        if kind == "checkpoint":  # the zoo's checkpoint format, holding these weights (not torchscript's .pt)
            from mnist_zoo.checkpoint import save_checkpoint

            return save_checkpoint(cpu_model, {"model": name}, self.directory / f"{stem}.checkpoint.pt")
        path = self.directory / f"{stem}{FORMATS[kind].suffix}"  # a KeyError for a kind that is no format
        try:
            if kind == "torchscript":
                from export.to_torchscript import export_torchscript

                return Path(export_torchscript(cpu_model, path))
            if kind == "onnx":
                from export.to_onnx import export_onnx

                return Path(export_onnx(cpu_model, path))
            if kind == "onnx-int8":
                from export.quantize import quantize_int8

                return Path(quantize_int8(self.path(name, model, "onnx"), path, self.calibration))
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] in OPTIONAL_PACKAGES:
                raise Unavailable(f"{e.name} is not installed ({INSTALL_HINT})") from None
            raise
        raise ValueError(f"the benchmark loads no {kind!r} files")
