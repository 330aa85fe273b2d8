"""Small shared helpers: the console pair, atomic writes, device and thread choice, seeding, the environment
record that every result carries (seed, versions, threads, device), and the error guard of every entry point."""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console

# The one console pair of every command line: results on stdout, progress, notes and errors on stderr.
out = Console()
err = Console(stderr=True)


class UserError(RuntimeError):
    """A problem the user can fix (bad name, bad file, bad option): printed as one line, exit code 1."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place.

    A crash mid-write leaves the old file (or none) under the final name, never half of a new one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {path.parent}: {e.strerror or e}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | Path, record: dict) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for 'cuda' without one is an error, never a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return torch.device(device)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the duration of a with-block, then put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str = "cpu") -> dict:
    """What a result needs to be reproduced: versions, threads, device and hardware."""
    import torchvision

    return {
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def guarded(command: Callable[[], int]) -> int:
    """Run a CLI command: user-fixable errors become one line on stderr and exit 1, Ctrl-C exits 130."""
    try:
        return command()
    except UserError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


def fail(message: str, code: int = 1) -> int:
    """Print a one-line error to stderr and return the exit code (callers `return fail(...)`)."""
    print(f"error: {message}", file=sys.stderr)
    return code
