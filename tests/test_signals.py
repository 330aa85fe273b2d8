"""SIGTERM means what Ctrl-C means in every entry point: one line, cleanup done, children ended, exit code 143.

    pytest tests/test_signals.py

SIGTERM is what `timeout`, a CI runner, systemd, Docker and Kubernetes send. Each test starts a real command
line, signals it while it works, and checks what is left: the last stderr line `error: terminated` (notes
before it start with "mnist-zoo: "), exit code 143, no temporary file or staging folder, no child still running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psutil
import pytest

from mnist_zoo import launch
from mnist_zoo.util import guarded

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not Path("/proc/self/maps").is_file(), reason="needs POSIX signals and /proc to see start-up progress"
)


def test_guarded_reports_sigterm_as_terminated(capsys):
    def work() -> int:
        raise launch.Terminated

    assert guarded(work) == launch.TERMINATED == 143
    assert capsys.readouterr().err == "error: terminated\n"


def _start(argv: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def _torch_loading(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _wait_for(condition, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def _one_line(proc: subprocess.Popen, timeout: float = 120) -> None:
    _, err = proc.communicate(timeout=timeout)
    *notes, last = err.splitlines() or [""]
    assert (proc.returncode, last) == (143, "error: terminated"), err[-2000:]
    assert all(line.startswith("mnist-zoo: ") for line in notes), err[-2000:]


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True  # ended; its new parent has not reaped it yet
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _leftovers(directory: Path) -> list[Path]:
    """Temporary files, staging folders and empty folders (an --out made for nothing) under `directory`. A
    checkpoint that `export` trained and saved before the signal came is a finished file, not a leftover."""
    return [
        p
        for p in directory.rglob("*")
        if p.name.endswith(".tmp") or "staging" in p.name or (p.is_dir() and not any(p.iterdir()))
    ]


def _script() -> str | None:
    """The `mnist-zoo` console script of this environment, if installed."""
    here = Path(sysconfig.get_path("scripts")) / "mnist-zoo"
    return str(here) if here.is_file() else shutil.which("mnist-zoo")


def test_every_entry_point_ends_in_one_line_and_143(tmp_path):
    """SIGTERM during the imports (torch takes seconds) and during the work, to all four entry points at once;
    afterwards nothing is left in their folders (no checkpoint half-written, no empty --out, no temp file)."""
    train = ["train", "lenet", "--epochs", "2", "--threads", "1", "--no-progress", "--json"]
    commands = {
        "python -m mnist_zoo": [sys.executable, "-m", "mnist_zoo", *train],
        "python -m export": [
            sys.executable,
            "-m",
            "export",
            "mlp",
            "--onnx",
            "--out",
            "out",
            "--no-progress",
        ],
        "python -m bench": [sys.executable, "-m", "bench", "report", "absent.json"],
    }
    if _script():
        commands["mnist-zoo"] = [_script(), *train]
    runs = []
    for name, argv in commands.items():
        for delay in (0.05, 0.3) if name == "python -m bench" else (0.05, 3.0):
            cwd = tmp_path / f"{name.replace(' ', '_')}-{delay}"
            cwd.mkdir()
            runs.append((name, delay, cwd, _start(argv, cwd, MNIST_ZOO_CHECKPOINTS=str(cwd / "ckpt"))))
    started: dict[int, float] = {}
    pending = list(runs)
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:
        for run in list(pending):
            _, delay, _, p = run
            if p.pid not in started and _torch_loading(p.pid):
                started[p.pid] = time.monotonic()
            if p.pid in started and time.monotonic() >= started[p.pid] + delay:
                p.send_signal(signal.SIGTERM)
                pending.remove(run)
        time.sleep(0.005)
    signalled = 0
    for name, delay, cwd, p in runs:
        if (name, delay, cwd, p) in pending:
            p.kill()
            p.communicate()
            continue
        if name == "python -m bench" and p.wait(120) == 1:
            p.communicate()
            continue  # bench finished (no such file) before the signal came
        _one_line(p)
        assert not _leftovers(cwd), (name, delay, _leftovers(cwd))
        signalled += 1
    assert signalled >= 6


def test_export_cleans_its_staging_folder(small_trained, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(small_trained("mlp")[2], ckpt / "mlp.pt")
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "export",
        "mlp",
        "--all",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
    ]
    p = _start(argv, tmp_path, MNIST_ZOO_CHECKPOINTS=str(ckpt))
    _wait_for(lambda: out.is_dir() and any("staging" in f.name for f in out.iterdir()), "a staging folder")
    time.sleep(0.5)  # inside an export or a verification run
    p.send_signal(signal.SIGTERM)
    _one_line(p)
    assert not out.exists()  # it did not exist before: no empty --out is left
    assert sorted(f.name for f in tmp_path.rglob("*")) == ["ckpt", "mlp.pt"]


def test_bench_check_ends_its_pytest_child(tmp_path):
    keep = tmp_path / "quick.json"
    argv = [sys.executable, "-m", "bench", "check", "--pause", "0", "--keep", str(keep)]
    p = _start(argv, ROOT)
    parent = psutil.Process(p.pid)

    def pytest_child() -> list[psutil.Process]:
        try:
            return [c for c in parent.children() if "pytest" in " ".join(c.cmdline())]
        except psutil.Error:
            return []

    _wait_for(lambda: pytest_child() or p.poll() is not None, "bench check's pytest child", timeout=300)
    [child] = pytest_child()
    _wait_for(lambda: _torch_loading(child.pid), "the pytest child loading torch")
    p.send_signal(signal.SIGTERM)
    _one_line(p)
    assert _gone(child.pid), "bench check's pytest child is still running"
    assert not keep.exists()
