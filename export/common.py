"""What every exporter shares: the module that is exported, the input contract, the metadata of the torch
archives, one-line errors (first_line) and a quiet exporter stack.

The contract of every artifact (ONNX, TorchScript, torch.export):
  input  `image`  float32 [batch, 1, 28, 28], already normalised: (pixel / 255 - 0.1307) / 0.3081
  output `logits` float32 [batch, 10]   (with softmax=True also `probabilities` [batch, 10], the softmax)
Normalisation stays outside the graph, as in the zoo's PyTorch models, so an artifact and its source model
take the same tensor and their logits can be compared one for one. BatchNorm is folded into the convolution
before it here, before any exporter sees the model (fold_batchnorm): every artifact runs one convolution where
the PyTorch model runs two layers, and verification compares it with the unfolded model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mnist_zoo.data import MEAN, STD
from mnist_zoo.util import UserError, WriteFailed, write_failed
from mnist_zoo.util import first_line as first_line  # the exporters' one-line errors (export/to_*.py)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
PROBS_NAME = "probabilities"
NORMALISATION = f"float32 [batch,1,28,28] = (pixel/255 - {MEAN}) / {STD}"
# Example batch for tracing: not 0 or 1, which torch.export specialises, so the batch axis stays symbolic.
EXAMPLE_BATCH = 2
# Loggers of the exporter stack that narrate every pass; their warnings are collected, not printed.
NOISY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._export",
    "torch._dynamo",
    "torch.fx",
    "onnxscript",
    "onnx_ir",
)


def write_failure(e: OSError | WriteFailed, what: str, then: str = "") -> UserError:
    """The one line for a failed write of `what` (an OSError, or atomic_write's WriteFailed about a staged file):
    exit 74 for a full disk or an I/O error, as util.write_failed decides; `then` says what was left as it was."""
    cause = e if isinstance(e, OSError) else e.__context__  # atomic_write raises WriteFailed from the OSError
    error = write_failed(what, cause) if isinstance(cause, OSError) else WriteFailed(str(e))
    return type(error)(f"{error}{then}")


class Exportable(nn.Module):
    """The zoo model as exported: `forward(image)` names the input `image` and returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


class WithProbabilities(Exportable):
    """softmax=True: (logits, probabilities). A separate class, as TorchScript needs one return type."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = self.model(image)
        return logits, torch.softmax(logits, dim=1)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """In place, in eval mode: every Conv2d followed by a BatchNorm2d in an nn.Sequential becomes one Conv2d whose
    weights and bias carry the BatchNorm's running statistics, scale and shift; the BatchNorm becomes Identity."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()
    return model


def prepare(model: nn.Module, softmax: bool = False) -> Exportable:
    """A float32, CPU, eval-mode copy in the default memory layout (training may leave lenet channels_last),
    BatchNorm folded, wrapped; the caller's model is left untouched."""
    model = copy.deepcopy(model).to("cpu", torch.float32).to(memory_format=torch.contiguous_format).eval()
    model = fold_batchnorm(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return (WithProbabilities if softmax else Exportable)(model).eval()


def example_input() -> torch.Tensor:
    return torch.zeros(EXAMPLE_BATCH, 1, 28, 28)


def batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=1 << 20)


def archive_metadata(metadata: dict | None, fmt: str, softmax: bool) -> dict:
    """What a TorchScript or torch.export archive says about itself, beside the caller's `metadata`."""
    return {
        **(metadata or {}),
        "format": fmt,
        "torch_version": torch.__version__,
        "input": INPUT_NAME,
        "normalisation": NORMALISATION,
        "softmax": softmax,
    }


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        if record.exc_info and record.exc_info[1] is not None:
            cause = str(record.exc_info[1]).strip().splitlines()
            text += f" ({cause[-1] if cause else type(record.exc_info[1]).__name__})"
        self.messages.append(text)


@contextlib.contextmanager
def quiet_exporters() -> Iterator[list[str]]:
    """Silence the exporter stack's loggers and deprecation warnings; yields the warning lines they emitted,
    for the caller to turn into one line when one matters (e.g. an opset it could not produce)."""
    handler = _Collect()
    saved = []
    for name in NOISY_LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.handlers[:], log.propagate))
        log.handlers = [handler]
        log.propagate = False
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream (torch >= 2.11) but still what C++ serving loads: keep the
            # FutureWarning of every torch.jit call out of the user's face; the CLI says it once, quietly.
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
            )
            warnings.filterwarnings("ignore", module=r"torch\.onnx.*|onnxscript.*|onnx_ir.*|torch\.export.*")
            yield handler.messages
    finally:
        for log, handlers, propagate in saved:
            log.handlers = handlers
            log.propagate = propagate
