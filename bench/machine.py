"""What the benchmark ran on: CPU, cores, threads, devices, library versions, and an estimate of peak FLOP/s.

    python -m bench.machine          # print the machine record as JSON

The peak FLOP/s is cores x clock x FP32 FLOP per cycle per core, the last from the widest FMA the CPU
advertises. It is an estimate (turbo clocks, AVX frequency drops and the number of FMA ports vary by model)
and says so; the report sets each model's throughput against it (bench/report.py, "% of ceiling").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

import torch

from mnist_zoo.util import cpu_name, device_name, guarded

# FP32 FLOP per cycle per core: 2 FMA ports x lanes x 2 (multiply + add). AVX-512 parts with one FMA port
# exist; we assume two, so the ceiling errs high (a model reaching a small fraction of it is not suspicious).
FLOP_PER_CYCLE = {"avx512f": 64, "fma": 32, "avx": 16, "sse2": 8}  # widest first


def cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def clock_ghz(cpuinfo: str) -> tuple[float | None, str]:
    """The CPU clock in GHz and where it came from: cpufreq's maximum, /proc/cpuinfo's MHz, else the BogoMIPS
    that virtual machines still report (twice the TSC clock on x86)."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    if m := re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M):
        return float(m.group(1)) / 1000, "/proc/cpuinfo MHz"
    if m := re.search(r"^bogomips\s*:\s*([\d.]+)", cpuinfo, re.M | re.I):
        return float(m.group(1)) / 2000, "BogoMIPS / 2"
    return None, "unknown"


def peak_flops(n_cores: int | None = None, cpuinfo: str | None = None) -> dict:
    """{'flops': FP32 FLOP/s or None, 'how': the arithmetic behind it}."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set(m.group(1).split()) if (m := re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)) else set()
    isa = next((f for f in FLOP_PER_CYCLE if f in flags), None)
    ghz, source = clock_ghz(cpuinfo)
    if isa is None or ghz is None:
        return {"flops": None, "how": "unknown (no /proc/cpuinfo flags or clock)"}
    n_cores = n_cores or cores()
    per_cycle = FLOP_PER_CYCLE[isa]
    how = (
        f"{n_cores} cores x {ghz:.2f} GHz ({source}) x {per_cycle} FP32 FLOP/cycle ({isa.upper()}), estimated"
    )
    return {"flops": n_cores * ghz * 1e9 * per_cycle, "how": how}


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "onnx", "onnxruntime", "numpy", "pytest_benchmark"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def describe(threads: list[int] | None = None, train_threads: int | None = None, quick: bool = False) -> dict:
    """The machine header every results file carries (pytest-benchmark's machine_info['mnist_zoo'])."""
    return {
        "cpu": cpu_name(),
        "cores": cores(),
        "cpu_count": os.cpu_count(),
        "threads": threads or [torch.get_num_threads()],  # inference (each) and accuracy (the largest) rows
        "train_threads": train_threads or torch.get_num_threads(),
        "cuda": device_name("cuda") if torch.cuda.is_available() else None,
        "ort_providers": ort_providers(),
        "peak": peak_flops(),
        "versions": versions(),
        "platform": platform.platform(),
        "quick": quick,
    }


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m bench.machine", description=__doc__, formatter_class=fmt)
    parser.parse_args(argv)  # no options: --help only
    print(json.dumps(describe(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
