"""Small shared helpers: the console pair, atomic writes and output checks, device and thread choice, seeding,
the environment record that every result carries (seed, versions, threads, device), and the error guard of
every entry point."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from rich.console import Console

from mnist_zoo.launch import interruption

# The one console pair of every command line: results on stdout, progress, notes and errors on stderr.
out = Console()
err = Console(stderr=True)


# A temporary file of atomic_write's that is this old and whose writer has exited is the leftover of a killed
# run (a write takes seconds): the next write in its directory removes it.
STALE_TMP_S = 3600
# atomic_write's temporary names: .NAME.PID.XXXXXXXX.tmp (mkstemp's 8 random characters); without the PID
# before this version. Nothing else is ever removed.
OUR_TEMP_FILE = re.compile(r"\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp")


EXIT_IO = 74  # sysexits.h EX_IOERR: a write failed (a full disk, a quota, an I/O error)
# Errors of the place, not of the path the user gave: exit EXIT_IO even where the directory was still being set up.
_IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


class UserError(RuntimeError):
    """A problem the user can fix (bad name, bad file, bad option): printed as one line, exit code 1."""

    exit_code = 1


class WriteFailed(UserError):
    """A file could not be written (e.g. the disk is full): one line, exit 74; the previous file is unchanged
    and no partial file is left."""

    exit_code = EXIT_IO


def write_failed(path: str | Path, e: OSError, start: str = "cannot write") -> UserError:
    """The one-line error of a failed write to `path`: WriteFailed (exit 74) for a full disk or an I/O error,
    a plain UserError (exit 1) for a place the user can fix (permissions, a missing directory)."""
    return _error_kind(e)(f"{start} {path}: {e.strerror or e}")


def _error_kind(e: OSError) -> type[UserError]:
    return WriteFailed if e.errno in _IO_ERRNOS else UserError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place.

    A crash mid-write leaves the old file (or none) under the final name, never half of a new one; a kill
    leaves a temporary file, which a later write in the same directory removes once it is stale."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(path.parent, e, "cannot create directory") from None
    remove_stale_temps(path.parent)
    try:
        prefix = f".{path.name}.{os.getpid()}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_failed(path.parent, e, "cannot write to") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # the disk filled up, a quota, an I/O error: the old file stays, the new one goes
        Path(tmp).unlink(missing_ok=True)
        raise WriteFailed(
            f"cannot write {path}: {e.strerror or e}; the previous file, if any, is unchanged"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks: memory stays small whatever the file's size."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(directory: Path) -> None:
    """Delete the leftovers of killed writers in `directory`: only atomic_write's own temporary files (and
    directories named like them), only when older than STALE_TMP_S and their writer is no longer running."""
    try:
        candidates = [p for p in directory.iterdir() if OUR_TEMP_FILE.fullmatch(p.name)]
    except OSError:
        return
    for p in candidates:
        pid = OUR_TEMP_FILE.fullmatch(p.name)["pid"]
        try:
            if time.time() - p.lstat().st_mtime < STALE_TMP_S or (pid is not None and _running(int(pid))):
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass  # gone already, or not ours to remove: leave it


def _running(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts: it may still be writing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):  # no such pid can exist
        return False
    return True


def check_output_dir(directory: str | Path, what: str, *, parents: bool = False) -> Path:
    """Fail now, before any work, unless files can be written in `directory` later: it exists and takes a file,
    or it can be created (with its missing parents only if `parents`). Nothing is left behind. `what` starts
    the error message, e.g. "--out artifacts"."""
    directory = Path(directory).expanduser()
    if directory.is_dir():
        try:
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as e:
            raise _error_kind(e)(f"{what}: cannot write in {directory} ({e.strerror or e})") from None
        return directory
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a directory")
    missing = directory.absolute().parent
    if not parents and not missing.is_dir():
        raise UserError(f"{what}: parent directory {missing} does not exist")
    try:
        directory.mkdir(parents=parents)
        _remove_created(directory, existing)
    except OSError as e:
        raise _error_kind(e)(f"{what}: cannot write in {existing} ({e.strerror or e})") from None
    return directory


def _remove_created(directory: Path, existing: Path) -> None:
    """rmdir `directory` and its parents up to (not including) `existing`: undo check_output_dir's probe."""
    for d in [directory.absolute(), *directory.absolute().parents]:
        if d == existing.absolute():
            break
        d.rmdir()


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


def environment(device: torch.device | str = "cpu", threads: int | None = None) -> dict:
    """What a result needs to be reproduced: versions, threads (default: torch's setting now), device and
    hardware."""
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
        "threads": torch.get_num_threads() if threads is None else threads,
    }


def guarded(command: Callable[[], int], *, quiet: bool = False) -> int:
    """Run a CLI command: user-fixable errors become one line on stderr and their exit code (1 unless the error
    says otherwise), Ctrl-C exits 130, SIGTERM 143. Signals before this runs (imports) are mnist_zoo.launch's.
    `quiet`: the exit code without the line, for a process whose sibling says it (torchrun's ranks above 0)."""
    try:
        return command()
    except UserError as e:
        tell_torchrun(str(e))
        return e.exit_code if quiet else fail(str(e), e.exit_code)
    except KeyboardInterrupt as e:  # SIGTERM arrives as its subclass, mnist_zoo.launch.Terminated
        message, code = interruption(e)
        tell_torchrun(message)
        return code if quiet else fail(message, code)


def tell_torchrun(message: str) -> None:
    """Under torchrun, give its failure report our line as this rank's cause. torchrun's agent reads the file
    that TORCHELASTIC_ERROR_FILE names, once the rank has exited, in the format its @record decorator writes;
    without one, its "Root Cause" says "error_file: <N/A>" and "To enable traceback see: ...". Every rank
    writes its own (the agent's root cause is the earliest), best effort: the exit code says the failure anyway."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    when = str(int(time.time()))
    record = {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": when}}}
    with suppress(OSError):
        Path(path).write_text(json.dumps(record))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, cut short: library errors can run to pages, and the user gets
    one line."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def fail(message: str, code: int = 1) -> int:
    """Print a one-line error to stderr and return the exit code (callers `return fail(...)`)."""
    print(f"error: {message}", file=sys.stderr)
    return code
