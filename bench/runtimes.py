"""The runtimes a zoo model is benchmarked in, each wrapped as a Predictor with one timed call.

    >>> p = build("ort-fp32", model, torch.device("cpu"), threads=2, exports=exports, name="lenet", batch=64)
    >>> x = p.prepare(batch)          # once: move the batch where the runtime wants it (numpy, GPU, ...)
    >>> p.run(x)                      # the timed call: inference and, on CUDA, synchronisation
    >>> p.logits(batch)               # CPU float32 logits, for the accuracy rows

Every runtime gets the same thread count: torch.set_num_threads for eager, TorchScript and torch.compile;
SessionOptions.intra_op_num_threads for ONNX Runtime; INFERENCE_NUM_THREADS for OpenVINO, whose performance
hint is chosen from the batch the predictor will be called with (see _openvino_predictor). A runtime that is
absent here (no onnxruntime or openvino, no CUDA, no CUDA provider, torch.compile failing) raises Unavailable
with the reason, which the benchmark turns into a skip; a runtime that is present but produces a broken export
fails loudly instead. `artifact(...)` is the file each runtime loads (the checkpoint for eager and
torch.compile): what bench/coldstart.py starts from in a fresh process.

bf16 (--bench-precision bf16): PyTorch eager under torch.autocast, and OpenVINO with its bf16 inference
precision hint, are rows of their own runtimes (BF16: eager-bf16, openvino-bf16); every other runtime says why it
has none (bf16_unavailable).
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

from bench.coldstart import openvino_config
from export.formats import FORMATS
from mnist_zoo.precision import Chosen, autocast
from mnist_zoo.targets import precision
from mnist_zoo.util import first_line

RUNTIMES = ("eager", "torchscript", "ort-fp32", "ort-int8", "openvino", "openvino-int8", "compile")
LABELS = {  # as the tables name them (ORT: ONNX Runtime; OV: OpenVINO)
    "eager": "PyTorch eager",
    "torchscript": "TorchScript",
    "ort-fp32": "ORT fp32",
    "ort-int8": "ORT int8",
    "openvino": "OV fp32",
    "openvino-int8": "OV int8",
    "compile": "torch.compile",
    "ort-web": "ORT web (wasm)",  # bench/test_web.py's row: onnxruntime-web in Chromium, not built here
    "eager-bf16": "PyTorch eager bf16",
    "openvino-bf16": "OV bf16",
}
# The bf16 runtime of each runtime that has one (--bench-precision bf16), and why the others have none.
BF16 = {"eager": "eager-bf16", "openvino": "openvino-bf16"}
NO_BF16 = {
    "torchscript": "TorchScript under autocast is not benchmarked: PyTorch eager's bf16 row measures the same kernels",
    "compile": "torch.compile under autocast is not benchmarked (a second compilation per shape)",
    "ort-fp32": "ONNX Runtime has no bf16 CPU kernels for Conv, Gemm or MatMul: a bf16 model would only add casts "
    "around fp32 arithmetic",
    "ort-int8": "an int8 runtime: its precision is int8, in every --bench-precision",
    "openvino-int8": "an int8 runtime: its precision is int8, in every --bench-precision",
}
# The file each runtime loads: the zoo's checkpoint, or an export format of export/formats.py (int8: the QDQ
# file, which OpenVINO runs with its own int8 kernels).
ARTIFACT_KIND = {
    "eager": "checkpoint",
    "compile": "checkpoint",
    "torchscript": "torchscript",
    "ort-fp32": "onnx",
    "ort-int8": "onnx-int8",
    "openvino": "onnx",
    "openvino-int8": "onnx-int8",
}
# Runtimes that need more than the test install (pip install 'mnist-zoo[openvino]'); CI's has not got them.
EXTRA_RUNTIMES = {"openvino", "openvino-int8"}
OPTIONAL_PACKAGES = {"onnx", "onnxruntime", "onnxscript"}  # missing ones make a runtime absent, not broken
INSTALL_HINT = "pip install 'mnist-zoo[export]'"
# OpenVINO's THROUGHPUT hint runs one stream per thread; the benchmark's call cuts its batch into one slice
# per stream. Below this many images per slice, one stream with every thread (the LATENCY hint) is faster.
OPENVINO_MIN_SLICE = 32


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


def bf16_unavailable(runtime: str, device: torch.device) -> str | None:
    """Why `runtime` has no bf16 row on `device`, or None when it has (BF16)."""
    if runtime in NO_BF16:
        return NO_BF16[runtime]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return unavailable(runtime, device)


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
    if runtime.startswith("openvino"):
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (pip install 'mnist-zoo[openvino]')"
        if device.type == "cuda":
            return "OpenVINO has no CUDA device (it runs on the CPU here)"
    return None


def _sync(device: torch.device) -> Callable[[], None]:
    # CUDA kernels are asynchronous: without a synchronise the clock would time only the launch.
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _torch_predictor(
    module: Callable, device: torch.device, info: dict | None = None, precision: str = "fp32"
) -> Predictor:
    sync = _sync(device)
    chosen = Chosen(precision, "")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(chosen, device):
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
            raise Unavailable(f"torch.compile does not work here: {type(e).__name__}: {first_line(e)}") from e
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


def _openvino_predictor(path: Path, threads: int, batch: int | None, precision: str = "fp32") -> Predictor:
    import numpy as np
    import onnx
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    from export.integrity import check_onnx_seal

    check_onnx_seal(onnx.load(path), path)  # the file is the one exported, as ORT's loader makes sure too
    # The hint per batch: LATENCY is one stream with every thread on each call; THROUGHPUT is one stream per
    # thread, and the call cuts its batch into one slice per stream, run at once: no thread team to
    # synchronise after every layer. Either way `threads` threads in all. The batch axis stays dynamic.
    streams = threads if batch and threads > 1 and batch >= threads * OPENVINO_MIN_SLICE else 1
    config = openvino_config(threads, streams)
    if precision == "bf16":  # OpenVINO's own bf16 kernels (its config forces f32 otherwise)
        config[hints.inference_precision] = ov.Type.bf16
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    chose = compiled.get_property(hints.inference_precision).get_type_name()
    if precision == "bf16" and chose != "bf16":  # it falls back where the CPU has no bf16: not a bf16 row
        raise Unavailable(f"OpenVINO runs {chose}, not bf16, on this CPU despite its bf16 precision hint")
    requests = [compiled.create_infer_request() for _ in range(streams)]

    inputs: list[np.ndarray | None] = [None] * streams  # each request's own input memory

    def prepare(x: torch.Tensor) -> list:
        return np.array_split(x.contiguous().numpy(), min(streams, len(x)))  # views: a slice per stream

    def run(slices: list):
        # Each call copies its images into the request's own input memory (as a server would each request's),
        # then runs. Cheaper than wrapping each call's array: lenet batch 1 took 115 us wrapping it in an
        # ov.Tensor and 135 us through infer({0: x}, share_inputs=True), against 86 us with the input in place
        # (1 thread, interleaved; ORT: 62 us). The outputs are copied out, so that a result outlives the next call.
        busy = requests[: len(slices)]
        for i, (request, part) in enumerate(zip(busy, slices, strict=True)):
            if inputs[i] is None or inputs[i].shape != part.shape:  # a new batch size: new input memory
                inputs[i] = np.empty_like(part)
                request.set_input_tensor(ov.Tensor(inputs[i], shared_memory=True))
            np.copyto(inputs[i], part)
        if len(busy) == 1:
            busy[0].infer(share_outputs=True)
        else:
            for request in busy:
                request.start_async()
            for request in busy:
                request.wait()
        return np.concatenate([request.get_output_tensor().data for request in busy])

    # Which kernels it chose: an int8 file whose layers silently ran in fp32 would show here.
    layers = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    layers = [rt for rt in layers if rt["layerType"].astype(str) in ("Convolution", "FullyConnected")]
    int8 = [rt for rt in layers if rt["runtimePrecision"].astype(str) in ("u8", "i8")]
    info = {
        "performance_hint": str(compiled.get_property(hints.performance_mode)),
        "num_streams": int(compiled.get_property(props.num_streams)),
        "inference_num_threads": int(compiled.get_property(props.inference_num_threads)),
        "inference_precision": chose,
        "int8_layers": f"{len(int8)} of {len(layers)} convolution and fully connected layers",
    }
    return Predictor(prepare, run, torch.from_numpy, info)


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


def artifact(runtime: str, model: nn.Module, exports: Exports, name: str) -> Path:
    """The file `runtime` loads for `model` (a zoo model called `name`)."""
    return exports.path(name, model, ARTIFACT_KIND[runtime])


def build(
    runtime: str,
    model: nn.Module,
    device: torch.device,
    threads: int,
    exports: Exports,
    name: str,
    batch: int | None = None,
    precision: str = "fp32",
) -> Predictor:
    """A Predictor for `model` (a zoo model called `name`) in `runtime` on `device` with `threads` threads.
    `batch`: the batch size it will be called with, for runtimes that tune for one (OpenVINO's hint); any
    batch size still runs. precision bf16: the runtime's bf16 row (BF16), where it has one."""
    reason = unavailable(runtime, device) if precision == "fp32" else bf16_unavailable(runtime, device)
    if reason:
        raise Unavailable(reason)
    torch.set_num_threads(threads)
    if runtime == "eager":
        return _torch_predictor(copy.deepcopy(model).to(device).eval(), device, precision=precision)
    if runtime == "compile":
        return _compiled(copy.deepcopy(model).to(device).eval(), device)
    if runtime == "torchscript":
        from export.to_torchscript import load_torchscript  # checks the file's SHA-256, then the weights'

        scripted, _ = load_torchscript(artifact(runtime, model, exports, name))
        return _torch_predictor(scripted.to(device).eval(), device)
    if runtime.startswith("openvino"):
        return _openvino_predictor(artifact(runtime, model, exports, name), threads, batch, precision)
    return _ort_predictor(artifact(runtime, model, exports, name), device, threads)
