"""What every artifact carries and how a loader knows it was not changed: metadata and a SHA-256 seal.

    >>> from export.integrity import seal_onnx, check_onnx_seal, weights_digest, read_verified
    >>> proto = seal_onnx(proto, {"model": "lenet"})   # metadata_props + "mnist_zoo.sha256"
    >>> check_onnx_seal(proto, path)                   # UserError if graph, weights or metadata changed
    >>> data = read_verified("artifacts/lenet.pt")     # the bytes, once they match lenet.pt.sha256

ONNX: the seal is the SHA-256 of the deterministic serialisation of the whole model with the seal entry left
out, stored as the metadata prop "mnist_zoo.sha256". Protobuf still parses a file whose weight bytes were
edited, and onnxruntime would happily run it, so without the seal a damaged model would only show up as
wrong answers. TorchScript and torch.export files: a digest of the weights (names, dtypes, shapes, bytes) in
the archive's extra file "mnist_zoo.json", checked against the weights the loader actually got.

TorchScript and torch.export files can carry code that runs while they load (a scripted __setstate__ runs
inside torch.jit.load), so the seal inside them can only be read after that code ran. Their bytes are therefore
checked first, against a SHA-256 of the whole file that comes from outside it: the caller's (an exporter that
has just written the file knows it), else the file NAME.sha256 beside it, which the exporter writes in
`sha256sum` format (`sha256sum -c lenet.pt.sha256` checks it too). read_verified reads the file once, with a
size cap, hashes those bytes and hands the same bytes to the deserialiser, so the file cannot be swapped between
the check and the load. A digest stored in the file itself would prove nothing: a crafted file would carry its
own.

The seal catches accidental changes (a damaged copy, a stray edit), not deliberate ones: it is an unkeyed
SHA-256, which anyone who changes the file can recompute and store. Authenticity needs a signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mnist_zoo.schema import parse_json
from mnist_zoo.util import UserError, atomic_write, atomic_write_bytes

if TYPE_CHECKING:  # onnx is imported where it is used: a TorchScript loader (bench/coldstart.py) needs none
    import onnx

SEAL_KEY = "mnist_zoo.sha256"
META_PREFIX = "mnist_zoo."  # every metadata prop we write is namespaced, so a reader can tell ours apart
EXTRA_FILE = "mnist_zoo.json"  # the metadata file inside TorchScript / torch.export archives
SEAL_SCOPE = "the seal catches accidental changes, not deliberate ones"
DIGEST_SUFFIX = ".sha256"  # lenet.pt -> lenet.pt.sha256
# The zoo's artifacts are under 1 MiB (dnn's .onnx: 0.3 MiB); a file past this is refused before it is read, so
# a stray or hostile file costs no more memory than this (.onnx, .int8.onnx, .pt, .pt2 alike).
MAX_ARTIFACT_BYTES = 16 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _as_text(value: object) -> str:
    # ONNX metadata is string -> string: structured values (recipes, lists) are stored as JSON.
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _model_digest(proto: onnx.ModelProto) -> str:
    import onnx

    unsealed = onnx.ModelProto()
    unsealed.CopyFrom(proto)
    kept = [(p.key, p.value) for p in unsealed.metadata_props if p.key != SEAL_KEY]
    del unsealed.metadata_props[:]
    for key, value in kept:
        unsealed.metadata_props.add(key=key, value=value)
    return hashlib.sha256(unsealed.SerializeToString(deterministic=True)).hexdigest()


def seal_onnx(proto: onnx.ModelProto, metadata: dict | None = None) -> onnx.ModelProto:
    """Add `metadata` as namespaced metadata_props (replacing same-named ones), then the seal. In place."""
    props = {p.key: p.value for p in proto.metadata_props if p.key != SEAL_KEY}
    for key, value in (metadata or {}).items():
        if value is not None:
            props[f"{META_PREFIX}{key}"] = _as_text(value)
    del proto.metadata_props[:]
    for key in sorted(props):
        proto.metadata_props.add(key=key, value=props[key])
    proto.metadata_props.add(key=SEAL_KEY, value=_model_digest(proto))
    return proto


def check_onnx_seal(proto: onnx.ModelProto, path: str | Path) -> None:
    """UserError unless `proto` carries a seal that matches its content."""
    seals = [p.value for p in proto.metadata_props if p.key == SEAL_KEY]
    if not seals:
        raise UserError(
            f"{path} is not an mnist-zoo export (no {SEAL_KEY} seal); re-export it with python -m export"
        )
    if seals[0] != _model_digest(proto):
        raise UserError(
            f"{path} was modified after export (SHA-256 seal mismatch; {SEAL_SCOPE}); re-export it"
        )


def onnx_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """Our metadata props without the namespace prefix (values as stored: strings, JSON for structures)."""
    return {p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes as it is
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def extra_file(metadata: dict | None, state_dict: dict[str, torch.Tensor]) -> str:
    """The JSON stored inside a TorchScript / .pt2 archive: metadata plus the weights digest."""
    return json.dumps({**(metadata or {}), "weights_sha256": weights_digest(state_dict)}, sort_keys=True)


def check_extra_file(text: str | bytes | None, state_dict: dict[str, torch.Tensor], path: str | Path) -> dict:
    """Parse the archive's metadata and check its weights digest against the loaded weights."""
    if not text:
        raise UserError(f"{path} is not an mnist-zoo export (no {EXTRA_FILE} inside); re-export it")
    data = text.encode() if isinstance(text, str) else text
    try:  # the archive's bytes matched its digest, but a digest beside a file is anyone's to recompute
        meta = parse_json(data, what=f"{path}: {EXTRA_FILE} inside the archive is damaged")
    except UserError as e:
        raise UserError(f"{e}; re-export it") from None
    if not isinstance(meta, dict) or meta.get("weights_sha256") != weights_digest(state_dict):
        raise UserError(
            f"{path} was modified after export (weights SHA-256 mismatch; {SEAL_SCOPE}); re-export it"
        )
    return meta


# --- the bytes of a file that can carry code, checked before any deserialiser sees them --------------------


def digest_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of `path` is kept: NAME.sha256 beside it."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def write_digest(path: str | os.PathLike, sha256: str) -> Path:
    """Write NAME.sha256 beside `path`, atomically, as `sha256sum` does ("HEX  NAME")."""
    path = Path(path)
    return atomic_write(digest_path(path), lambda tmp: tmp.write_text(f"{sha256}  {path.name}\n"))


def write_with_digest(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically, then NAME.sha256 beside it: the digest of these bytes. Serialised in
    memory first, so that a full disk is an OSError from Python's write, not a failure inside a C++ writer."""
    path = atomic_write_bytes(path, data)
    write_digest(path, hashlib.sha256(data).hexdigest())
    return path


def expected_digest(path: str | os.PathLike) -> str:
    """The SHA-256 that NAME.sha256 beside `path` names; UserError when it is absent or not a digest file."""
    path, sidecar = Path(path), digest_path(path)
    try:
        with open(sidecar, "rb") as f:
            text = f.read(4096).decode("ascii", "replace")
    except FileNotFoundError:
        raise UserError(
            f"{path}: no {sidecar.name} beside it, so its bytes cannot be checked before loading (this format "
            "can run code as it loads); re-export it with python -m export, or pass the expected SHA-256"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read {sidecar} ({e.strerror or e})") from None
    words = text.split()
    if not words or not _HEX64.fullmatch(words[0].lower()):
        raise UserError(
            f"{sidecar} is not a SHA-256 file (expected `HEX  {path.name}`); re-export {path.name}"
        )
    return words[0].lower()


def read_artifact(path: str | os.PathLike) -> bytes:
    """The bytes of an artifact file, read once and at most MAX_ARTIFACT_BYTES (a larger file is refused before
    it is read); every failure is a one-line UserError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_ARTIFACT_BYTES:
                raise UserError(
                    f"{path} is {size:,} bytes, over the {MAX_ARTIFACT_BYTES:,} an artifact may have; refused"
                )
            data = f.read(MAX_ARTIFACT_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    if len(data) > MAX_ARTIFACT_BYTES:  # it grew while we read it
        raise UserError(f"{path} is over the {MAX_ARTIFACT_BYTES:,} bytes an artifact may have; refused")
    return data


def read_verified(path: str | os.PathLike, sha256: str | None = None) -> bytes:
    """The bytes of `path`, once their SHA-256 equals `sha256` (default: the one in NAME.sha256 beside it).

    Read once (read_artifact: at most MAX_ARTIFACT_BYTES), so that the bytes checked are the bytes the caller
    deserialises. Every refusal is a one-line UserError naming the file; nothing in the file has run."""
    path = Path(path)
    expected = (sha256 or "").lower() or expected_digest(path)
    if not _HEX64.fullmatch(expected):
        raise UserError(f"the expected SHA-256 of {path} is not 64 hex digits: {expected[:80]!r}")
    data = read_artifact(path)
    if hashlib.sha256(data).hexdigest() != expected:
        source = "the SHA-256 given" if sha256 else digest_path(path).name
        raise UserError(
            f"{path} was modified after export (its SHA-256 differs from {source}; {SEAL_SCOPE}); refused "
            "before loading; re-export it"
        )
    return data
