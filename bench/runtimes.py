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

from mnist_zoo.targets import precision

RUNTIMES = ("eager", "torchscript", "ort-fp32", "ort-int8", "compile")
LABELS = {  # as the tables name them (ORT: ONNX Runtime)
    "eager": "PyTorch eager",
    "torchscript": "TorchScript",
    "ort-fp32": "ORT fp32",
    "ort-int8": "ORT int8",
    "compile": "torch.compile",
}
OPTIONAL_PACKAGES = {"onnx", "onnxruntime", "onnxscript"}  # missing ones make a runtime absent, not broken
INSTALL_HINT = "pip install 'mnist-zoo[export]'"


class Unavailable(Exception):
    """This runtime cannot run on this machine; the message says why (it becomes the skip reason)."""


@dataclass
class Predictor:
    prepare: Callable[[torch.Tensor], Any]  # normalised CPU float32 [N,1,28,28] -> the runtime's input
    run: Callable[[Any], Any]  # the timed call; returns the runtime's output, synchronised
    to_logits: Callable[[Any], torch.Tensor]  # the runtime's output -> CPU float32 logits [N, 10]
    info: dict = field(default_factory=dict)  # what to record with the row (providers, compile seconds, ...)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_logits(self.run(self.prepare(x)))


def unavailable(runtime: str, device: torch.device) -> str | None:
    """Why `runtime` cannot run on `device` here, or None when it can (checked before any work is done)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if runtime.startswith("ort"):
        try:
            import onnxruntime as ort
        except ImportError:
            return f"onnxruntime is not installed ({INSTALL_HINT})"
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        if device.type == "cuda" and precision(runtime) == "int8":
            return (
                "onnxruntime's CUDA provider has no int8 kernels for quantised models (CPU or TensorRT only)"
            )
    return None


def _sync(device: torch.device) -> Callable[[], None]:
    # CUDA kernels are asynchronous: without a synchronise the clock would time only the launch.
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _torch_predictor(module: Callable, device: torch.device, info: dict | None = None) -> Predictor:
    sync = _sync(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = module(x)
        sync()
        return out

    return Predictor(lambda x: x.to(device).contiguous(), run, lambda out: out.float().cpu(), info or {})


def _compiled(model: nn.Module, device: torch.device) -> Predictor:
    # Every zoo model is an nn.Sequential, so all their compiled graphs hang off one code object
    # (Sequential.forward), and 3 models x 3 batch sizes exceed dynamo's default limit of 8 variants per code
    # object: under fullgraph=True the ninth would fail instead of being measured.
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # older torch
    setattr(config, limit, max(getattr(config, limit), 64))
    # fullgraph=True: a graph break would silently run parts eagerly, and the row would not be what it says.
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    predictor = _torch_predictor(compiled, device, {"compile_seconds": {}})
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


def _ort_predictor(path: Path, device: torch.device, threads: int) -> Predictor:
    import onnxruntime as ort

    from export.verify import ort_session

    # The export's own loader (it checks the file's seal, then onnx.checker): `threads` intra-op threads, one
    # inter-op thread, sequential execution.
    session = ort_session(path, threads)
    cuda = device.type == "cuda"
    index = device.index or 0
    if cuda:  # the same session options, on the GPU
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), session.get_session_options(), providers=providers)
        if session.get_providers()[0] != "CUDAExecutionProvider":
            got = session.get_providers()
            raise Unavailable(f"onnxruntime could not start its CUDA provider (got {got})")
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    info = {"providers": session.get_providers(), "intra_op_num_threads": threads}
    if not cuda:
        return Predictor(
            prepare=lambda x: {in_name: x.contiguous().numpy()},
            run=lambda feed: session.run([out_name], feed)[0],
            to_logits=torch.from_numpy,
            info=info,
        )

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

    def to_logits(binding) -> torch.Tensor:
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])

    return Predictor(prepare, run, to_logits, info)


class Exports:
    """The export files of each model (TorchScript, ONNX fp32, ONNX int8), made on first use and reused for
    the session, so every row of a runtime measures the same file. `calibration` feeds the int8 quantiser."""

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


def build(
    runtime: str, model: nn.Module, device: torch.device, threads: int, exports: Exports, name: str
) -> Predictor:
    """A Predictor for `model` (a zoo model called `name`) in `runtime` on `device` with `threads` threads."""
    reason = unavailable(runtime, device)
    if reason:
        raise Unavailable(reason)
    torch.set_num_threads(threads)
    if runtime == "eager":
        return _torch_predictor(copy.deepcopy(model).to(device).eval(), device)
    if runtime == "compile":
        return _compiled(copy.deepcopy(model).to(device).eval(), device)
    if runtime == "torchscript":
        from export.to_torchscript import load_torchscript  # checks the weights digest the export wrote

        scripted, _ = load_torchscript(exports.path(name, model, "torchscript"))
        return _torch_predictor(scripted.to(device).eval(), device)
    kind = "onnx-int8" if precision(runtime) == "int8" else "onnx"
    return _ort_predictor(exports.path(name, model, kind), device, threads)
