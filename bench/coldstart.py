"""Cold start and peak memory: a fresh process loads one runtime's artifact and answers, timed from outside.

    >>> measure("ort-fp32", Path("lenet.onnx"), "lenet", threads=2, runs=3)
    {'cold_start_s': 0.52, 'peak_rss_mb': 91.0, 'deployment': {...}}

A plugin runtime's child is `python -m bench.plugin_child`, which builds it with its own factory (importing torch).
The child runs what a deployment of that runtime would: it imports only that runtime (torch for eager,
TorchScript and torch.compile; onnxruntime or openvino, and numpy, for the ONNX files; not this project's
benchmark code, which imports torch), loads the artifact (builds the session, compiles the model), answers one
image and says so on stdout. `cold_start_s` is the parent's clock from starting the process to that line:
interpreter start, imports, loading, compiling and the first inference. The child then runs a batch of
PEAK_BATCH images and reports its peak resident memory (`peak_rss_mb`: see peak_rss_mb()). Threads are
set as in bench/runtimes.py. torch.compile starts from an empty compile cache (a fresh TORCHINDUCTOR_CACHE_DIR)
every time, so its cold start compiles, once per shape (the answer's, then the batch's).
"""

from __future__ import annotations

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Nothing here imports torch at module level: the child of an ONNX runtime must not pay for it.

ROOT = Path(__file__).resolve().parents[1]
PEAK_BATCH = 1000  # the largest batch of the latency benchmark
BUILT_IN = ("eager", "torchscript", "compile")  # and ort-*, openvino*: the runtimes _load builds


def openvino_config(threads: int, streams: int) -> dict:
    """OpenVINO CPU properties for `threads` threads in all, in `streams` streams (1: the LATENCY hint)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    mode = hints.PerformanceMode.THROUGHPUT if streams > 1 else hints.PerformanceMode.LATENCY
    return {
        props.inference_num_threads: threads,
        props.num_streams: streams,
        hints.performance_mode: mode,
        # fp32 means fp32: on CPUs with bf16 or AMX, OpenVINO would otherwise compute in bf16.
        hints.inference_precision: ov.Type.f32,
        # Unpinned, like every other runtime's threads: the OS may move a thread off a core another process
        # took, where a pinned one would hold up its team. (Measured here on a quiet machine, lenet: pinning
        # changed batch 1 and batches split across streams by under 5%.)
        hints.enable_cpu_pinning: False,
    }


def _load(runtime: str, path: str, model: str, threads: int) -> Callable:
    """A function numpy images -> numpy logits, built the way a deployment of `runtime` would build it."""
    if runtime.startswith("ort"):
        import onnxruntime as ort

        options = ort.SessionOptions()  # as export.verify.ort_session
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    if runtime.startswith("openvino"):
        import openvino as ov

        request = ov.Core().compile_model(path, "CPU", openvino_config(threads, 1)).create_infer_request()
        return lambda x: request.infer({0: x}, share_inputs=True)[0]
    if runtime not in BUILT_IN:  # ort and openvino returned above
        raise SystemExit(f"error: unknown runtime {runtime!r}")
    import torch

    torch.set_num_threads(threads)
    if runtime == "torchscript":  # its bytes checked against NAME.sha256 before torch.jit.load runs them
        from export.integrity import read_verified

        module = torch.jit.load(io.BytesIO(read_verified(path)))
    else:
        from mnist_zoo.models import get_model

        module = get_model(model)
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        module.eval()
        if runtime == "compile":
            module = torch.compile(module, fullgraph=True, dynamic=False)

    def run(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB. Linux: VmHWM, the peak of this program's own memory; its
    ru_maxrss would also count the parent it was forked from (Linux carries it across exec: 800 MB and more
    here, from a pytest process holding torch). Elsewhere ru_maxrss (bytes on macOS)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 2**10


def child(runtime: str, path: str, model: str, threads: int, batch: int, load: Callable = _load) -> None:
    import numpy as np

    run = load(runtime, path, model, threads)
    answer = run(np.zeros((1, 1, 28, 28), np.float32))
    if answer.shape != (1, 10):
        raise SystemExit(f"error: {path} answered with shape {answer.shape}, not (1, 10)")
    print("answered", flush=True)  # the parent's clock stops here
    run(np.zeros((batch, 1, 28, 28), np.float32))
    print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


def _once(runtime: str, path: Path, model: str, threads: int, cache: str) -> tuple[float, float]:
    # A plugin runtime's child is bench.plugin_child, which builds it with its own factory (importing torch).
    own = runtime in BUILT_IN or runtime.startswith(("ort", "openvino"))
    entry = "bench.coldstart" if own else "bench.plugin_child"
    cmd = [sys.executable, "-m", entry, runtime, str(path), model, str(threads)]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty child cannot block on it
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        first = child.stdout.readline()
        seconds = time.perf_counter() - start
        rest = child.stdout.read()  # not communicate(): it would miss what readline() buffered already
        child.wait()
        if child.returncode != 0 or first.strip() != "answered":
            log.seek(0)
            lines = log.read().strip().splitlines() or [f"exit code {child.returncode}"]
            raise RuntimeError(f"cold start of {runtime} on {path.name} failed: {lines[-1]}")
    return seconds, json.loads(rest)["peak_rss_mb"]


def measure(runtime: str, path: Path, model: str, threads: int, runs: int) -> dict:
    """`runs` fresh processes: the medians of their cold starts and peak memories, and how they were taken."""
    from mnist_zoo.cpu import Contention  # here, not above: it imports torch, which the child must not

    if not path.is_file():
        raise RuntimeError(f"cold start of {runtime}: no such file: {path}")
    seconds, peaks = [], []
    with Contention() as busy:
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="mnist-zoo-inductor-") as cache:
                s, peak = _once(runtime, path, model, threads, cache)
            seconds.append(round(s, 3))
            peaks.append(peak)
    how = {
        "runs": runs,
        "threads": threads,
        "first_answer_batch": 1,
        "peak_batch": PEAK_BATCH,
        "cold_start_runs_s": seconds,
        "peak_rss_runs_mb": peaks,
        "artifact": path.name,
        **{k: v for k, v in busy.record().items() if k == "contention"},
    }
    return {
        "cold_start_s": statistics.median(seconds),
        "peak_rss_mb": statistics.median(peaks),
        "deployment": how,
    }


if __name__ == "__main__":  # the child that _once() starts: not a command (bench/__main__.py holds those)
    runtime, path, model, threads = sys.argv[1:]
    child(runtime, path, model, int(threads), PEAK_BATCH)
