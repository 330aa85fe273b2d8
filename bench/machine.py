"""What the benchmark ran on: CPU, the CPUs it could use and how busy they were, threads, devices, versions.

Every results file carries this record (pytest-benchmark's machine_info["mnist_zoo"]); `python -m bench
report FILE` prints it as the header of the tables.
"""

from __future__ import annotations

import os
import platform

import torch

from mnist_zoo import cpu
from mnist_zoo.util import cpu_name, device_name


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "onnx", "onnxruntime", "openvino", "numpy", "pytest_benchmark"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def describe(threads: list[int], train_threads: int, quick: bool, busy: dict) -> dict:
    """The machine record; `busy` is the contention record taken when the session chose its threads."""
    return {
        "cpu": cpu_name(),
        "cores": len(cpu.affinity()),
        "cpu_count": os.cpu_count(),
        "cpus_available": cpu.available(),
        "busy_at_start": busy.get("contention"),
        "load_average": busy.get("load_average"),
        "threads": threads,  # inference (each) and accuracy (the largest) rows
        "train_threads": train_threads,
        "cuda": device_name("cuda") if torch.cuda.is_available() else None,
        "ort_providers": ort_providers(),
        "versions": versions(),
        "platform": platform.platform(),
        "quick": quick,
    }
