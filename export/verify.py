"""Verification: run an artifact on the whole test set beside the PyTorch model it came from.

    >>> from export.verify import ort_session, reference_logits, verify_onnx
    >>> session = ort_session("artifacts/lenet.onnx", threads=1)    # refuses a damaged or tampered file
    >>> report = verify_onnx("artifacts/lenet.onnx", reference_logits(model, images), images, labels)
    >>> report.ok, report.problems

What must hold, with the bounds of mnist_zoo.targets (EXPORT_*), beside the benchmark's looser floors. fp32:
top-1 predictions agree with PyTorch's on EXPORT_MIN_AGREEMENT of the test images and no logit differs by more
than EXPORT_MAX_ABS_DIFF, at batch 1,000 over all images and at batch 1 over the first BATCH1_IMAGES (the
batch axis is dynamic, so both must run). int8: test accuracy at most EXPORT_MAX_INT8_DROP below PyTorch's;
agreement and logit differences are reported, not bounded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from google.protobuf.message import DecodeError
from torch import nn

from export.common import INPUT_NAME, OUTPUT_NAME, first_line, prepare
from export.integrity import check_onnx_seal, read_artifact
from mnist_zoo.targets import EXPORT_MAX_ABS_DIFF, EXPORT_MAX_INT8_DROP, EXPORT_MIN_AGREEMENT
from mnist_zoo.util import UserError, torch_threads

BIG_BATCH = 1000
BATCH1_IMAGES = 1000  # batch-1 runs cost ~10k calls on the full set; the first 1,000 show the axis works


def ort_session(
    path: str | os.PathLike, threads: int = 1, *, check_seal: bool = True
) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session: `threads` intra-op threads, 1 inter-op thread (sequential execution).

    The file is parsed, its SHA-256 seal checked (check_seal=False for files not exported by mnist-zoo) and
    onnx.checker run before onnxruntime sees it; every failure is a one-line UserError naming the file."""
    path = Path(path)
    if threads < 1:
        raise UserError(f"threads must be at least 1, got {threads}")
    if not path.is_file():
        raise UserError(f"no ONNX file at {path}")
    data = read_artifact(path)  # size-capped: a huge file is refused before it is read
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as e:
        raise UserError(f"{path} is not a readable ONNX file ({first_line(e)})") from None
    if not proto.graph.node:
        raise UserError(f"{path} is not an ONNX model (no graph)")
    if check_seal:
        check_onnx_seal(proto, path)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # ValidationError, and UnicodeDecodeError for a damaged string field
        raise UserError(f"{path} fails onnx.checker: {first_line(e)}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: onnxruntime's warnings about unused initializers are noise
    try:
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's Fail/InvalidGraph/NotImplemented are not one hierarchy
        runtime = f"onnxruntime {onnxruntime.__version__}"
        raise UserError(f"{runtime} cannot load {path} ({first_line(e)})") from None


def run_onnx(
    session: onnxruntime.InferenceSession,
    images: torch.Tensor,
    batch_size: int = BIG_BATCH,
    outputs: tuple[str, ...] = (OUTPUT_NAME,),
) -> torch.Tensor | list[torch.Tensor]:
    """Logits for normalised images [N, 1, 28, 28], batch by batch (a list when several outputs are asked)."""
    arr = images.detach().cpu().float().numpy()
    runs = [
        session.run(list(outputs), {INPUT_NAME: arr[i : i + batch_size]})
        for i in range(0, len(arr), batch_size)
    ]
    out = [torch.from_numpy(np.concatenate([r[k] for r in runs])) for k in range(len(outputs))]
    return out[0] if len(outputs) == 1 else out


@torch.no_grad()
def run_torch(module: Callable, images: torch.Tensor, batch_size: int = BIG_BATCH) -> torch.Tensor:
    """Logits of a torch callable (model, TorchScript or torch.export module); of a tuple, the first item."""
    return _run_torch_all(module, images, batch_size)[0]


@torch.no_grad()
def _run_torch_all(module: Callable, images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    out: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        y = module(images[i : i + batch_size])
        out.append(list(y) if isinstance(y, tuple | list) else [y])
    return [torch.cat([o[k] for o in out]).float() for k in range(len(out[0]))]


def reference_logits(model: nn.Module, images: torch.Tensor, threads: int = 1) -> torch.Tensor:
    """The PyTorch model's fp32 logits, from the same prepared copy the exporters export."""
    # One thread by default: verification is not a benchmark, and one thread is deterministic and, on a busy
    # machine, many times faster than threads spinning against other processes.
    with torch_threads(threads):
        return run_torch(prepare(model).model, images)


@dataclass
class Parity:
    """How an artifact's outputs compare to the PyTorch model's on the test set."""

    images: int
    agree: int  # top-1 predictions equal to the PyTorch model's
    max_abs_diff: float  # largest |logit difference| over all images and classes, at batch 1,000
    accuracy: float  # the artifact's own test accuracy
    reference_accuracy: float
    batch1_images: int
    batch1_max_abs_diff: float  # batch-1 run vs the PyTorch logits, first batch1_images images
    run_seconds: float
    int8: bool = False
    probabilities_max_abs_diff: float | None = None  # softmax=True: vs softmax of the PyTorch logits
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def accuracy_drop(self) -> float:
        return self.reference_accuracy - self.accuracy

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "accuracy_drop": self.accuracy_drop}


def compare(
    run: Callable[[torch.Tensor, int], list[torch.Tensor]],
    reference: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    int8: bool = False,
) -> Parity:
    """Run `run(images, batch_size)` -> [logits] or [logits, probabilities] at batch 1,000 on everything and
    at batch 1 on the first images, and judge it against the PyTorch logits."""
    t0 = time.perf_counter()
    logits, *probs = run(images, BIG_BATCH)
    n1 = min(BATCH1_IMAGES, len(images))
    small = run(images[:n1], 1)[0]
    seconds = time.perf_counter() - t0
    if logits.shape != reference.shape:
        raise UserError(f"artifact returned logits {list(logits.shape)}, expected {list(reference.shape)}")
    pred, ref_pred = logits.argmax(1), reference.argmax(1)
    p = Parity(
        images=len(images),
        agree=int((pred == ref_pred).sum()),
        max_abs_diff=float((logits - reference).abs().max()),
        accuracy=float((pred == labels).float().mean()),
        reference_accuracy=float((ref_pred == labels).float().mean()),
        batch1_images=n1,
        batch1_max_abs_diff=float((small - reference[:n1]).abs().max()),
        run_seconds=seconds,
        int8=int8,
    )
    if probs:
        p.probabilities_max_abs_diff = float((probs[0] - torch.softmax(reference, 1)).abs().max())
    if int8:
        if p.accuracy_drop > EXPORT_MAX_INT8_DROP:
            limit = EXPORT_MAX_INT8_DROP * 100
            p.problems.append(f"int8 accuracy drop {p.accuracy_drop * 100:.2f} points > {limit:.1f}")
        # The batch-1 run must still agree with the batch-1,000 run of the same artifact.
        if not torch.equal(small.argmax(1), pred[:n1]):
            p.problems.append("int8 batch-1 predictions differ from batch-1,000 predictions")
        return p
    need = int(np.ceil(EXPORT_MIN_AGREEMENT * len(images)))
    if p.agree < need:
        p.problems.append(f"top-1 agreement {p.agree:,}/{len(images):,} < {need:,}")
    diffs = {"max |logit diff|": p.max_abs_diff, "batch-1 max |logit diff|": p.batch1_max_abs_diff}
    if probs:
        diffs["max |probability diff|"] = p.probabilities_max_abs_diff
    for what, diff in diffs.items():
        if not diff <= EXPORT_MAX_ABS_DIFF:  # `not <=` so a NaN fails too
            p.problems.append(f"{what} {diff:.2e} > {EXPORT_MAX_ABS_DIFF:.0e}")
    return p


def verify_onnx(
    path: str | os.PathLike,
    reference: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    int8: bool = False,
    threads: int = 1,
) -> Parity:
    session = ort_session(path, threads)
    names = tuple(o.name for o in session.get_outputs())
    if names[0] != OUTPUT_NAME:
        raise UserError(f"{path}: first output is {names[0]!r}, expected {OUTPUT_NAME!r}")

    def run(x: torch.Tensor, batch: int) -> list[torch.Tensor]:
        out = run_onnx(session, x, batch, names)
        return out if isinstance(out, list) else [out]

    return compare(run, reference, images, labels, int8=int8)


def verify_torch(
    load: Callable[[str | os.PathLike], tuple],
    path: str | os.PathLike,
    reference: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    threads: int = 1,
) -> Parity:
    """For TorchScript (to_torchscript.load_torchscript) and torch.export (to_pt2.load_pt2) files."""
    module, _ = load(path)
    with torch_threads(threads):
        return compare(lambda x, b: _run_torch_all(module, x, b), reference, images, labels)
