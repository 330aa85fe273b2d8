"""What every artifact carries and how a loader knows it was not changed: metadata and a SHA-256 seal.

    >>> from export.integrity import seal_onnx, check_onnx_seal, weights_digest
    >>> proto = seal_onnx(proto, {"model": "lenet"})   # metadata_props + "mnist_zoo.sha256"
    >>> check_onnx_seal(proto, path)                   # UserError if graph, weights or metadata changed

ONNX: the seal is the SHA-256 of the deterministic serialisation of the whole model with the seal entry left
out, stored as the metadata prop "mnist_zoo.sha256". Protobuf still parses a file whose weight bytes were
edited, and onnxruntime would happily run it, so without the seal a damaged model would only show up as
wrong answers. TorchScript and torch.export files: a digest of the weights (names, dtypes, shapes, bytes) in
the archive's extra file "mnist_zoo.json", checked against the weights the loader actually got.

The seal catches accidental changes (a damaged copy, a stray edit), not deliberate ones: it is an unkeyed
SHA-256, which anyone who changes the file can recompute and store. Authenticity needs a signature.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import torch

from mnist_zoo.util import UserError

SEAL_KEY = "mnist_zoo.sha256"
META_PREFIX = "mnist_zoo."  # every metadata prop we write is namespaced, so a reader can tell ours apart
EXTRA_FILE = "mnist_zoo.json"  # the metadata file inside TorchScript / torch.export archives
SEAL_SCOPE = "the seal catches accidental changes, not deliberate ones"


def _as_text(value: object) -> str:
    # ONNX metadata is string -> string: structured values (recipes, lists) are stored as JSON.
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _model_digest(proto: onnx.ModelProto) -> str:
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
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: {EXTRA_FILE} inside the archive is damaged; re-export it") from None
    if not isinstance(meta, dict) or meta.get("weights_sha256") != weights_digest(state_dict):
        raise UserError(
            f"{path} was modified after export (weights SHA-256 mismatch; {SEAL_SCOPE}); re-export it"
        )
    return meta
