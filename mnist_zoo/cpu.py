"""The CPUs this process may use, how much of them other processes take, and a thread count that cannot collapse.

    >>> from mnist_zoo import cpu
    >>> cpu.available()                       # CPUs of the affinity mask, capped by a cgroup CPU quota
    >>> with cpu.Contention() as c:           # the share of those CPUs' time other processes took meanwhile
    ...     work()
    >>> c.record()                            # {"contention": 0.02, "cpus_available": 2.0, "load_average": 0.4}
    >>> cpu.default_threads()                 # all free CPUs; fewer, with a note on stderr, when others are busy
    >>> cpu.matrix_units("bf16")              # ["amx_bf16", "avx512_bf16"]: the CPU's native bf16 units, if any

Why it matters: torch and onnxruntime split every operator across a team of threads that meet at a barrier.
When another process takes a core from one of them, the whole team waits for it, once per operator: on a
2-core machine with two other processes spinning their own thread pools, lenet's batch-1 latency in PyTorch eager
at 2 threads grew tens of times, while 1 thread barely moved (docs/benchmarks.md, "Reading figures on a busy
machine"). So a figure is only worth reporting with
the contention it was measured under, and a default thread count is only safe if it leaves busy cores alone.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import psutil
import torch

from mnist_zoo.targets import CONTENDED
from mnist_zoo.util import UserError, err

SAMPLE_S = 0.25  # how long default_threads() watches the machine before choosing
# A thread gets a CPU only if other processes leave at least (1 - FREE_SLACK) of it, since even a fraction of a
# core taken at the wrong moment stalls a whole thread team. floor(free + FREE_SLACK) below.
FREE_SLACK = 0.2
TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's choice at start-up: the physical cores


def affinity() -> list[int]:
    """The CPU numbers this process may run on (containers and taskset narrow them)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def _quota() -> float | None:
    """CPUs' worth of time the cgroup allows (v2 cpu.max, else v1 cfs quota), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text()
        except OSError:
            return None
    return None if quota.strip() in ("max", "-1") else int(quota) / int(period)


def available() -> float:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota when there is one."""
    quota = _quota()
    return float(len(affinity())) if quota is None else min(float(len(affinity())), quota)


def _busy(cpus: list[int]) -> float:
    """Busy seconds of the given CPUs since boot (all processes): everything but idle and iowait."""
    idle = ("idle", "iowait", "guest", "guest_nice")  # guest time is counted in user time already (Linux)
    per_cpu = psutil.cpu_times(percpu=True)
    return sum(sum(t) - sum(getattr(t, f, 0) for f in idle) for i, t in enumerate(per_cpu) if i in cpus)


def _own() -> float:
    """CPU seconds of this process and its children (DataLoader workers, say), live or finished."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:  # a child that just ended: its time moves to its parent's children_* fields
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class Contention:
    """`with Contention() as c:` measures the share of the allowed CPUs' time that *other* processes used while
    the block ran (0: the machine was ours; 1: others took every cycle). Also records the CPUs available and the
    1-minute load average at the start. Resolution: the kernel's 10 ms accounting tick, so blocks shorter than
    ~0.1 s get a rough figure."""

    def __init__(self) -> None:
        self.cpus = affinity()
        self.share: float | None = None
        self.wall = self.own_seconds = 0.0  # the block's seconds, and this process's CPU seconds in it

    def __enter__(self) -> Contention:
        self.load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self._start = (time.perf_counter(), _busy(self.cpus), _own())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, own0 = self._start
        self.wall, self.own_seconds = time.perf_counter() - wall0, _own() - own0
        others = (_busy(self.cpus) - busy0) - self.own_seconds
        self.share = min(1.0, max(0.0, others / (self.wall * len(self.cpus)))) if self.wall > 0 else 0.0

    @property
    def contended(self) -> bool:
        return self.share is not None and self.share > CONTENDED

    def others_cpus(self) -> float:
        """CPUs' worth of time other processes used."""
        return (self.share or 0.0) * len(self.cpus)

    def record(self) -> dict:
        return {"contention": self.share, "cpus_available": available(), "load_average": self.load}


def sample(seconds: float = SAMPLE_S) -> Contention:
    """What other processes do to the machine right now, watched for `seconds`."""
    with Contention() as c:
        time.sleep(seconds)
    return c


def default_threads(busy: Contention | None = None, quiet: bool = False) -> int:
    """Every CPU available (at most torch's own default, the physical cores), less those other processes keep
    busy (`busy`: a sample() taken now, by default); says on stderr when it chose fewer and why."""
    cpus = available()
    most = max(1, min(TORCH_DEFAULT_THREADS, math.floor(cpus)))
    if most == 1:
        return 1
    busy = busy or sample()
    threads = max(1, min(most, math.floor(cpus - busy.others_cpus() + FREE_SLACK)))
    if threads < most and not quiet:
        err.print(
            f"mnist-zoo: {lowered(threads, most, busy)}; --threads N overrides",
            highlight=False,
            soft_wrap=True,
        )
    return threads


def lowered(threads: int, most: int, busy: Contention) -> str:
    """Why fewer threads than CPUs, in words."""
    others = f"other processes kept {busy.others_cpus():.1f} of {available():g} CPUs busy"
    return f"using {threads} thread(s), not {most}: {others}, and a thread team waits for its slowest member"


# The CPU features that do bfloat16 or int8 products natively (x86: AMX tiles, AVX-512 dot products; Arm: the
# bf16 and int8 matrix-multiply extensions), best first. Without them, oneDNN converts bf16 to float32 and back
# around float32 arithmetic: it works, and is slower than float32 alone.
MATRIX_UNITS = {
    "bf16": ("amx_bf16", "avx512_bf16", "bf16"),
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm"),
}


def cpu_flags() -> set[str]:
    """The CPU's feature flags: what torch's cpuinfo reports (torch.cpu.get_capabilities), else /proc/cpuinfo."""
    try:
        return {k for k, v in torch.cpu.get_capabilities().items() if v is True}
    except (AttributeError, RuntimeError):  # an older torch
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {
        f
        for line in text.splitlines()
        if line.split(":")[0].strip() in ("flags", "Features")
        for f in line.split(":", 1)[1].split()
    }


def matrix_units(kind: str) -> list[str]:
    """This CPU's native units for `kind` ("bf16" or "int8") products, best first; [] when it has none."""
    flags = cpu_flags()
    return [f for f in MATRIX_UNITS[kind] if f in flags]


def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads: `threads`, or default_threads() when None. Returns the number in force."""
    if threads is None:
        threads = default_threads()
    elif threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
