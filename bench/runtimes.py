"""The runtimes a zoo model is benchmarked in, each wrapped as a Predictor with one timed call.

    >>> p = build("ort-fp32", model, torch.device("cpu"), threads=2, exports=exports, name="lenet")
    >>> x = p.prepare(batch)          # once: move the batch where the runtime wants it (numpy, GPU, ...)
    >>> p.run(x)                      # the timed call: inference and, on CUDA, synchronisation
    >>> p.logits(batch)               # CPU float32 logits, for the accuracy rows

Every runtime gets the same thread count: torch.set_num_threads for eager, TorchScript and torch.compile;
SessionOptions.intra_op_num_threads for ONNX Runtime. A runtime that is absent here (no onnxruntime, no CUDA,
no CUDA provider, torch.compile failing) raises Unavailable with the reason, which the benchmark turns into a
skip; a runtime that is present but produces a broken export fails loudly instead.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

RUNTIMES = ("eager", "torchscript", "ort-fp32", "ort-int8", "compile")
LABELS = {
    "eager": "PyTorch eager",
    "torchscript": "TorchScript",
    "ort-fp32": "ORT fp32",
    "ort-int8": "ORT int8",
    "compile": "torch.compile",
}  # fmt: skip  (ORT: ONNX Runtime)
INT8 = ("ort-int8",)  # runtimes whose outputs are quantised, so agree with eager only approximately
OPTIONAL_PACKAGES = {"onnx", "onnxruntime", "onnxscript"}  # missing ones make a runtime absent, not broken
INSTALL_HINT = "pip install 'mnist-zoo[export]'"


class Unavailable(Exception):
    """This runtime cannot run on this machine; the message says why (it becomes the skip reason)."""


@dataclass
class Predictor:
    runtime: str
    device: torch.device
    threads: int
    prepare: Callable[[torch.Tensor], Any]  # normalised CPU float32 [N,1,28,28] -> the runtime's input
    run: Callable[[Any], Any]  # the timed call; returns the runtime's output, synchronised
    to_logits: Callable[[Any], torch.Tensor]  # the runtime's output -> CPU float32 logits [N, 10]
    info: dict = field(default_factory=dict)  # what to record with the row (providers, compile seconds, ...)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_logits(self.run(self.prepare(x)))


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable(f"onnxruntime is not installed ({INSTALL_HINT})") from None
    return ort


def unavailable(runtime: str, device: torch.device) -> str | None:
    """Why `runtime` cannot run on `device` here, or None when it can (checked before any work is done)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if runtime.startswith("ort"):
        try:
            ort = _import_ort()
        except Unavailable as e:
            return str(e)
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        if device.type == "cuda" and runtime in INT8:
            return (
                "onnxruntime's CUDA provider has no int8 kernels for quantised models (CPU or TensorRT only)"
            )
    return None


def _sync(device: torch.device) -> Callable[[], None]:
    # CUDA kernels are asynchronous: without a synchronise the clock would time only the launch.
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _torch_predictor(
    runtime: str, module: Callable, device: torch.device, threads: int, info=None
) -> Predictor:
    sync = _sync(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = module(x)
        sync()
        return out

    return Predictor(runtime, device, threads, lambda x: x.to(device).contiguous(), run,
                     lambda out: out.float().cpu(), info or {})  # fmt: skip


def _compiled(model: nn.Module, device: torch.device, threads: int) -> Predictor:
    # Every zoo model is an nn.Sequential, so all their compiled graphs hang off one code object
    # (Sequential.forward), and 3 models x 3 batch sizes exceed dynamo's default limit of 8 variants per code
    # object: under fullgraph=True the ninth would fail instead of being measured.
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # older torch
    setattr(config, limit, max(getattr(config, limit), 64))
    # fullgraph=True: a graph break would silently run parts eagerly, and the row would not be what it says.
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    predictor = _torch_predictor("compile", compiled, device, threads, {"compile_seconds": {}})
    plain_run = predictor.run

    def run(x: torch.Tensor) -> torch.Tensor:
        shape = str(tuple(x.shape))
        if shape in predictor.info["compile_seconds"]:
            return plain_run(x)
        t0 = time.perf_counter()
        try:  # the first call of each shape compiles; a compiler missing or failing here makes it absent
            out = plain_run(x)
        except Exception as e:  # inductor raises many types (BackendCompilerFailed, CalledProcessError, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise Unavailable(f"torch.compile does not work here: {type(e).__name__}: {first[:160]}") from e
        predictor.info["compile_seconds"][shape] = round(time.perf_counter() - t0, 2)
        return out

    predictor.run = run
    return predictor


def _ort_predictor(runtime: str, path: Path, device: torch.device, threads: int) -> Predictor:
    ort = _import_ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # a chain of layers has no parallel branches to feed more threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    cuda = device.type == "cuda"
    index = device.index or 0
    providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"] if cuda else None
    session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    if cuda and session.get_providers()[0] != "CUDAExecutionProvider":
        raise Unavailable(f"onnxruntime could not start its CUDA provider (got {session.get_providers()})")
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    info = {"providers": session.get_providers(), "intra_op_num_threads": threads}
    if not cuda:
        return Predictor(runtime, device, threads, lambda x: {in_name: x.contiguous().numpy()},
                         lambda feed: session.run([out_name], feed)[0], torch.from_numpy, info)  # fmt: skip

    def prepare(x: torch.Tensor):
        # The input goes to the GPU once, through an IOBinding, so the timed call does not copy it again.
        value = ort.OrtValue.ortvalue_from_numpy(x.contiguous().numpy(), "cuda", index)
        binding = session.io_binding()
        binding.bind_ortvalue_input(in_name, value)
        binding.bind_output(out_name, "cuda", index)
        return binding, value

    def run(prepared):
        binding, _ = prepared
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding

    return Predictor(runtime, device, threads, prepare, run,
                     lambda b: torch.from_numpy(b.copy_outputs_to_cpu()[0]), info)  # fmt: skip


class Exports:
    """The export files of each model (TorchScript, ONNX fp32, ONNX int8), made on first use and reused for
    the session, so every row of a runtime measures the same file. `calibration` feeds the int8 quantiser."""

    def __init__(self, directory: Path, calibration: torch.Tensor | None):
        self.directory, self.calibration = Path(directory), calibration
        self._paths: dict[tuple[str, str, str], Path] = {}
        self.seconds: dict[tuple[str, str, str], float] = {}

    def path(self, name: str, model: nn.Module, kind: str) -> Path:
        from export.integrity import weights_digest  # lazily: onnx may be absent, and its rows then skip

        key = (
            name,
            kind,
            weights_digest(model.state_dict()),
        )  # the same name may come with other weights (trained or not)
        if key not in self._paths:
            t0 = time.perf_counter()
            self._paths[key] = self._make(name, model, kind)
            self.seconds[key] = round(time.perf_counter() - t0, 2)
        return self._paths[key]

    def _make(self, name: str, model: nn.Module, kind: str) -> Path:
        from export.integrity import weights_digest

        cpu_model = copy.deepcopy(model).cpu().eval()
        stem = f"{name}-{weights_digest(model.state_dict())[:12]}"
        try:
            if kind == "torchscript":
                from export.to_torchscript import export_torchscript

                return Path(export_torchscript(cpu_model, self.directory / f"{stem}.ts.pt"))
            if kind == "onnx":
                from export.to_onnx import export_onnx

                return Path(export_onnx(cpu_model, self.directory / f"{stem}.onnx"))
            if kind == "onnx-int8":
                from export.quantize import quantize_int8

                fp32 = self.path(name, model, "onnx")
                return Path(quantize_int8(fp32, self.directory / f"{stem}.int8.onnx", self.calibration))
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] in OPTIONAL_PACKAGES:
                raise Unavailable(f"{e.name} is not installed ({INSTALL_HINT})") from None
            raise
        raise ValueError(f"unknown export kind {kind!r}")


def build(runtime: str, model: nn.Module, device: torch.device, threads: int, exports: Exports,
          name: str) -> Predictor:  # fmt: skip
    """A Predictor for `model` (a zoo model called `name`) in `runtime` on `device` with `threads` threads."""
    reason = unavailable(runtime, device)
    if reason:
        raise Unavailable(reason)
    torch.set_num_threads(threads)
    if runtime == "eager":
        return _torch_predictor(runtime, copy.deepcopy(model).to(device).eval(), device, threads)
    if runtime == "compile":
        return _compiled(copy.deepcopy(model).to(device).eval(), device, threads)
    if runtime == "torchscript":
        from export.to_torchscript import load_torchscript  # checks the weights digest the export wrote

        scripted, _ = load_torchscript(exports.path(name, model, "torchscript"))
        return _torch_predictor(runtime, scripted.to(device).eval(), device, threads)
    kind = "onnx-int8" if runtime in INT8 else "onnx"
    return _ort_predictor(runtime, exports.path(name, model, kind), device, threads)
