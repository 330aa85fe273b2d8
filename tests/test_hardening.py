"""No file's code runs before its bytes are verified, and no input file costs unbounded memory.

    pytest tests/test_hardening.py

A crafted TorchScript file whose scripted __setstate__ writes a file (torch.jit.load runs it) is refused before
torch.jit.load sees it, and nothing on disk changes; a torch.export file is held to the same check; a 3 GB raw
IDX file is refused in a fresh process whose peak memory is measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from export import integrity, to_pt2, to_torchscript
from mnist_zoo import data
from mnist_zoo.util import UserError, sha256_file

ROOT = Path(__file__).resolve().parents[1]
MAX_PEAK_MB = 1024  # the bound the IDX reader must hold for any file, here a 3 GB one


class Crafted(torch.nn.Module):
    """A module whose scripted __setstate__ overwrites the first 5 bytes of `target` with "XXXXX" (through a
    shared memory map, which TorchScript can open): what torch.jit.load runs while it loads the file."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.written = 0
        self.w = torch.nn.Parameter(torch.zeros(1))

    @torch.jit.export
    def __getstate__(self) -> tuple[str, int, torch.Tensor, bool]:
        return (self.target, self.written, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, int, torch.Tensor, bool]) -> None:
        self.target, self.w, self.training = state[0], state[2], state[3]
        mapped = torch.from_file(self.target, shared=True, size=5, dtype=torch.uint8)
        self.written = int(mapped.fill_(88).sum())  # used, so that the scripting compiler keeps the write

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w


def craft(path: Path, target: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        torch.jit.save(torch.jit.script(Crafted(str(target))), str(path))
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture
def never_deserialised(monkeypatch) -> list[str]:
    """torch.jit.load and torch.export.load replaced by recorders: a refused file must reach neither."""
    calls: list[str] = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append("torch.jit.load"))
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: calls.append("torch.export.load"))
    return calls


def test_the_crafted_file_does_write_when_loaded_plainly(tmp_path):
    """The premise of the next test: without the check, loading the crafted file changes a file on disk."""
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    crafted = craft(tmp_path / "crafted.pt", canary)
    code = f"import torch, warnings; warnings.simplefilter('ignore'); torch.jit.load({str(crafted)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    assert canary.read_text() == "XXXXXched"


def test_a_crafted_torchscript_file_is_refused_before_it_runs(small_trained, tmp_path, never_deserialised):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data")
    genuine = to_torchscript.export_torchscript(small_trained("mlp")[0], tmp_path / "mlp.pt")
    good_digest = integrity.expected_digest(genuine)
    crafted = craft(tmp_path / "crafted.pt", victim)
    substituted = tmp_path / "mlp.pt"
    shutil.copy(
        crafted, substituted
    )  # the crafted bytes where the genuine file was; its .sha256 left as it was
    before = snapshot(tmp_path)
    cases = [
        (crafted, None, "no crafted.pt.sha256 beside it"),  # no digest: nothing to check against
        (substituted, None, "modified after export"),  # the genuine file's digest beside it
        (crafted, good_digest, "modified after export"),  # the caller's digest
    ]
    for path, sha256, why in cases:
        with pytest.raises(UserError, match=why) as e:
            to_torchscript.load_torchscript(path, sha256=sha256)
        assert "\n" not in str(e.value)
    assert never_deserialised == [] and snapshot(tmp_path) == before
    assert victim.read_text() == "precious data"


def test_pt2_bytes_are_checked_before_loading(small_trained, tmp_path, never_deserialised):
    path = to_pt2.export_pt2(small_trained("mlp")[0], tmp_path / "mlp.pt2")
    assert integrity.expected_digest(path) == sha256_file(path)
    assert integrity.digest_path(path).read_text() == f"{sha256_file(path)}  mlp.pt2\n"  # sha256sum's format
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="mlp.pt2 was modified after export .*refused before loading"):
        to_pt2.load_pt2(path)
    integrity.digest_path(path).unlink()
    with pytest.raises(UserError, match="no mlp.pt2.sha256 beside it"):
        to_pt2.load_pt2(path)
    assert never_deserialised == []


def test_digest_files_and_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    path.write_bytes(b"x" * 100)
    integrity.digest_path(path).write_text("not a digest\n")
    with pytest.raises(UserError, match="m.pt.sha256 is not a SHA-256 file"):
        integrity.read_verified(path)
    with pytest.raises(UserError, match="not 64 hex digits"):
        integrity.read_verified(path, sha256="abc")
    monkeypatch.setattr(integrity, "MAX_ARTIFACT_BYTES", 99)
    with pytest.raises(UserError, match="100 bytes, over the 99 an artifact may have"):
        integrity.read_verified(path, sha256=sha256_file(path))
    monkeypatch.setattr(integrity, "MAX_ARTIFACT_BYTES", 100)
    assert integrity.read_verified(path, sha256=sha256_file(path).upper()) == b"x" * 100


# --- memory: a huge IDX file -----------------------------------------------------------------------------

PEAK_PROBE = """
import atexit, pathlib, runpy, sys
out, directory = sys.argv[1:]
def peak():  # this process's own high-water mark (VmHWM), written where the test reads it
    status = pathlib.Path("/proc/self/status").read_text()
    pathlib.Path(out).write_text(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:")))
atexit.register(peak)
sys.argv = ["mnist_zoo", "data", "--data-dir", directory]
runpy.run_module("mnist_zoo", run_name="__main__")
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_a_3_gb_idx_file_is_refused_with_bounded_memory(tmp_path):
    real = data.fetch()
    directory = tmp_path / "data"
    directory.mkdir()
    for name in data.SHA256:
        (directory / name).symlink_to(real / name)
    huge = directory / "t10k-images-idx3-ubyte"
    huge.unlink()
    with open(huge, "wb") as f:
        f.truncate(3 * 10**9)  # sparse: 3 GB long, no disk used
    peak = tmp_path / "peak-kib"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, str(peak), str(directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "t10k-images-idx3-ubyte: SHA-256 mismatch (3,000,000,000 bytes" in proc.stderr
    peak_mb = int(peak.read_text()) / 1024
    print(f"peak memory refusing a 3 GB IDX file: {peak_mb:.0f} MiB")
    assert peak_mb < MAX_PEAK_MB
