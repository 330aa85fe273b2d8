"""tract: Sonos' ONNX inference engine, written in Rust, as an mnist-zoo runtime plugin.

    pytest --benchmark-only --bench-runtimes eager,ort-fp32,tract -k inference

Why this runtime: the built-in ones are PyTorch (eager, TorchScript, torch.compile), ONNX Runtime and OpenVINO,
all C++ engines built on vendor kernel libraries (oneDNN, MLAS). tract is a third ONNX engine with its own
kernels and no C++ runtime at all, the kind embedded and edge deployments pick; `pip install tract` brings a
self-contained wheel. It runs on the CPU, in the calling thread (its Python bindings start no thread pool), so
its rows at more than one thread say so in runtime_info.
"""

from __future__ import annotations

import torch

from bench.runtimes import Job, Predictor, Runtime, Unavailable


def _available(device: torch.device) -> str | None:
    if device.type != "cpu":
        return "tract runs on the CPU only"
    try:
        import tract  # noqa: F401
    except ImportError:
        return "tract is not installed (pip install tract)"
    return None


def _load(job: Job) -> Predictor:
    try:
        import onnx
    except ImportError:
        raise Unavailable("onnx is not installed (pip install 'mnist-zoo[export]')") from None
    import tract

    from export.integrity import check_onnx_seal

    check_onnx_seal(onnx.load(job.artifact), job.artifact)  # the exported file, before tract parses it
    # into_model() optimises the graph for tract's kernels (declutter, then codegen); the batch axis stays
    # symbolic, so one model answers every batch size.
    runnable = tract.onnx().load(str(job.artifact)).into_model().into_runnable()
    info = {"engine": f"tract {tract.version()}", "threads_used": 1, "threads_given": job.threads}
    return Predictor(
        prepare=lambda x: x.contiguous().numpy(),
        run=lambda a: runnable.run([a])[0].to_numpy(),
        to_logits=torch.from_numpy,
        info=info,
    )


TRACT = Runtime("tract", "tract (Rust)", "onnx", _load, _available)
