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

Every runtime, built-in or plugin, is a `Runtime`: its name, label, the file it loads, whether it can run here,
and its factory of predictors, `load(Job) -> Predictor`. Plugins (docs/plugins.md) come from the entry-point group
`mnist_zoo.runtimes` of installed packages, or from a `module:attribute` spec given to --bench-runtimes, each
naming a Runtime; `runtime(name)` finds any of them, `runtime_names()` lists the built-ins and the plugins.

bf16 (--bench-precision bf16): PyTorch eager under torch.autocast, and OpenVINO with its bf16 inference
precision hint, are rows of their own runtimes (BF16: eager-bf16, openvino-bf16); every other runtime says why it
has none (bf16_unavailable).
"""

from __future__ import annotations

import copy
import importlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.artifacts import INSTALL_HINT, Exports, Unavailable
from bench.coldstart import openvino_config
from export.formats import FORMATS
from mnist_zoo.models import SPEC
from mnist_zoo.precision import Chosen, autocast
from mnist_zoo.targets import precision
from mnist_zoo.util import UserError, first_line

GROUP = "mnist_zoo.runtimes"  # the entry-point group of runtime plugins
SPECS_ENV = "MNIST_ZOO_RUNTIMES"  # specs resolved here, resolved again in child processes (cold starts)

RUNTIMES = ("eager", "torchscript", "ort-fp32", "ort-int8", "openvino", "openvino-int8", "compile")
LABELS = {  # as the tables name them (ORT: ONNX Runtime; OV: OpenVINO); a plugin's label is in its Runtime
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
# Runtimes that need more than the test install (pip install 'mnist-zoo[openvino]'); CI's has not got them.
EXTRA_RUNTIMES = {"openvino", "openvino-int8"}
# OpenVINO's THROUGHPUT hint runs one stream per thread; the benchmark's call cuts its batch into one slice
# per stream. Below this many images per slice, one stream with every thread (the LATENCY hint) is faster.
OPENVINO_MIN_SLICE = 32


@dataclass
class Predictor:
    prepare: Callable[[torch.Tensor], Any]  # normalised CPU float32 [N,1,28,28] -> the runtime's input
    run: Callable[[Any], Any]  # the timed call; returns the runtime's output, synchronised
    to_logits: Callable[[Any], torch.Tensor]  # the runtime's output -> CPU float32 logits [N, 10]
    info: dict = field(default_factory=dict)  # what to record with the row (providers, compile seconds, ...)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_logits(self.run(self.prepare(x)))


@dataclass(frozen=True)
class Job:
    """What a runtime's factory gets: the file to load and how to run it."""

    artifact: Path  # the file of the Runtime's `artifact` kind, sealed by the exporter
    model: (
        nn.Module | None
    )  # the PyTorch model (None in a cold-start process, for runtimes of an export file)
    device: torch.device
    threads: int  # every runtime gets the same count
    batch: int | None = (
        None  # the batch it will be called with, for runtimes that tune for one; any still runs
    )
    precision: str = "fp32"  # bf16 only for the runtimes in BF16


@dataclass(frozen=True)
class Runtime:
    """A runtime the benchmark measures. A name ending in int8 is held to the int8 floors (targets.precision)."""

    name: str
    label: str  # as the tables name it
    artifact: (
        str  # the file it loads: "checkpoint" or an export format (export/formats.py: onnx, onnx-int8, ...)
    )
    load: Callable[
        [Job], Predictor
    ]  # the factory: raises Unavailable with the reason when it cannot run here
    available: Callable[[torch.device], str | None] = lambda device: None  # why not on this device, or None
    source: str = "bench.runtimes"  # the built-ins, an entry point, or a module:attribute spec


def bf16_unavailable(runtime: str, device: torch.device) -> str | None:
    """Why `runtime` has no bf16 row on `device`, or None when it has (BF16)."""
    if runtime in NO_BF16:
        return NO_BF16[runtime]
    if runtime not in BF16:
        return f"{runtime} is a plugin runtime: the benchmark's bf16 rows are the built-in ones (BF16)"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return unavailable(runtime, device)


def unavailable(runtime: str, device: torch.device) -> str | None:
    """Why `runtime` cannot run on `device` here, or None when it can (checked before any work is done)."""
    if runtime not in RUNTIMES:
        if runtime not in _plugins():
            raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(runtime_names())}")
        if device.type == "cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return _plugins()[runtime].available(device)
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


def artifact(runtime: str, model: nn.Module, exports: Exports, name: str) -> Path:
    """The file `runtime` loads for `model` (a zoo model called `name`)."""
    return exports.path(name, model, (_BUILTIN.get(runtime) or _plugins()[runtime]).artifact)


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
    spec = _BUILTIN.get(runtime) or _plugins()[runtime]
    path = exports.path(name, model, spec.artifact)
    return spec.load(Job(path, model, device, threads, batch, precision))


def _load_torchscript(job: Job) -> Predictor:
    from export.to_torchscript import load_torchscript  # checks the file's SHA-256, then the weights'

    scripted, _ = load_torchscript(job.artifact)
    return _torch_predictor(scripted.to(job.device).eval(), job.device)


def _module(job: Job) -> nn.Module:
    return copy.deepcopy(job.model).to(job.device).eval()


_BUILTIN = {
    rt.name: rt
    for rt in (
        Runtime(
            "eager",
            LABELS["eager"],
            "checkpoint",
            lambda j: _torch_predictor(_module(j), j.device, precision=j.precision),
        ),
        Runtime("torchscript", LABELS["torchscript"], "torchscript", _load_torchscript),
        Runtime(
            "ort-fp32", LABELS["ort-fp32"], "onnx", lambda j: _ort_predictor(j.artifact, j.device, j.threads)
        ),
        Runtime(
            "ort-int8",
            LABELS["ort-int8"],
            "onnx-int8",
            lambda j: _ort_predictor(j.artifact, j.device, j.threads),
        ),
        *(
            Runtime(
                n, LABELS[n], k, lambda j: _openvino_predictor(j.artifact, j.threads, j.batch, j.precision)
            )
            for n, k in (("openvino", "onnx"), ("openvino-int8", "onnx-int8"))
        ),
        Runtime("compile", LABELS["compile"], "checkpoint", lambda j: _compiled(_module(j), j.device)),
    )
}
assert tuple(_BUILTIN) == RUNTIMES
# The file each built-in runtime loads: the zoo's checkpoint, or an export format of export/formats.py (int8: the
# QDQ file, which OpenVINO runs with its own int8 kernels).
ARTIFACT_KIND = {name: rt.artifact for name, rt in _BUILTIN.items()}
_PLUGINS: dict[str, Runtime] = {}
_BROKEN: dict[str, str] = {}  # a broken runtime plugin (entry point name or spec) -> its one-line problem
_loaded = False


def _add(obj: object, source: str, key: str) -> Runtime:
    """Register a plugin's Runtime; a UserError naming the plugin if it cannot join."""
    if not isinstance(obj, Runtime):
        raise UserError(
            f"runtime plugin {key} ({source}): names {type(obj).__name__}, not a bench.runtimes.Runtime"
        )
    taken = _BUILTIN.get(obj.name) or _PLUGINS.get(obj.name)
    if taken is not None and taken.load is obj.load:  # the same runtime again (a spec of an installed plugin)
        return taken
    if taken is not None:
        raise UserError(
            f"runtime plugin {key} ({source}): the name {obj.name!r} is taken by the runtime from {taken.source}"
        )
    if obj.artifact not in ("checkpoint", *FORMATS):
        raise UserError(
            f"runtime plugin {key} ({source}): artifact {obj.artifact!r} is none of checkpoint, {', '.join(FORMATS)}"
        )
    obj = obj if obj.source != "bench.runtimes" else replace(obj, source=source)
    _PLUGINS[obj.name] = obj
    return obj


def _load(key: str, value: str, source: str) -> Runtime | None:
    """Import `value` (module:attribute) and register the Runtime it names; a problem is kept in _BROKEN."""
    if key in _BROKEN:
        return None
    module, _, attr = value.partition(":")
    try:
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as e:  # a plugin may raise anything at import: one line naming it
            raise UserError(f"runtime plugin {key} ({value}): {type(e).__name__}: {first_line(e)}") from None
        return _add(obj, source, key)
    except UserError as e:
        _BROKEN[key] = str(e)
        return None


def _plugins() -> dict[str, Runtime]:
    global _loaded
    if not _loaded:
        _loaded = True
        for ep in entry_points(group=GROUP):
            _load(ep.name, ep.value, f"entry point {ep.name} = {ep.value}")
        for spec in filter(None, os.environ.get(SPECS_ENV, "").split(",")):
            _load(spec, spec, spec)
    return _PLUGINS


def runtime(name: str) -> Runtime:
    """A runtime by name, plugin name or module:attribute spec; a UserError for an unknown or broken one."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    found = _load(name, name, name) if SPEC.match(name) else _plugins().get(name)
    if found is not None and SPEC.match(name):
        passed_on = os.environ.get(SPECS_ENV, "").split(",")
        os.environ[SPECS_ENV] = ",".join(dict.fromkeys(s for s in [*passed_on, name] if s))
    if found is None and name in _BROKEN:
        raise UserError(_BROKEN[name])
    if found is None:
        raise UserError(
            f"unknown runtime {name!r}; choose from {', '.join(runtime_names())}, or a module:attribute"
        )
    return found


def runtime_names() -> list[str]:
    """The built-in runtimes, then the plugins' (installed, and any spec resolved by runtime())."""
    return [*RUNTIMES, *_plugins()]


def runtime_problems() -> list[str]:
    """One line per broken runtime plugin."""
    _plugins()
    return list(_BROKEN.values())


def in_order(names: Iterable[str]) -> list[str]:
    """Runtime names as the tables order them: the built-ins (LABELS' order), the plugins, then any other."""
    given = list(dict.fromkeys(names))
    known = [*LABELS, *_PLUGINS]
    return [rt for rt in known if rt in given] + [rt for rt in given if rt not in known]


def label(runtime: str) -> str:
    plugin = _PLUGINS.get(runtime)
    return LABELS.get(runtime) or (plugin.label if plugin else runtime)
