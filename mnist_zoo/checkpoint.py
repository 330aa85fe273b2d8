"""Checkpoints: a state_dict plus the metadata that says what it is, written atomically, read with weights_only.

Default place: $MNIST_ZOO_CHECKPOINTS, else <cache>/checkpoints (cache = $XDG_CACHE_HOME/mnist-zoo,
default ~/.cache/mnist-zoo), one file per model: mlp.pt, dnn.pt, lenet.pt, cnn.pt.
>>> from mnist_zoo.checkpoint import load_checkpoint
>>> model, meta = load_checkpoint("lenet")      # by model name, or by path
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from mnist_zoo.data import cache_dir
from mnist_zoo.models import get_model, list_models
from mnist_zoo.util import UserError, atomic_write_bytes, check_output_dir, first_line

FORMAT = "mnist-zoo/checkpoint/1"


def checkpoint_dir() -> Path:
    return Path(os.environ.get("MNIST_ZOO_CHECKPOINTS") or cache_dir() / "checkpoints")


def checkpoint_path(model_or_path: str | Path) -> Path:
    """A zoo model name maps to its default file; anything else is taken as a path."""
    if isinstance(model_or_path, str) and model_or_path in list_models():
        return checkpoint_dir() / f"{model_or_path}.pt"
    return Path(model_or_path)


def check_checkpoint_path(path: str | Path, model: str, explicit: bool) -> Path:
    """Fail before any training unless a checkpoint can be written at `path` (`explicit`: given as --checkpoint,
    whose directory may be created but not its parents; the default directory is created whole)."""
    path = Path(path).expanduser()
    what = f"--checkpoint {path}" if explicit else f"checkpoint {path}"
    if path.is_dir():
        raise UserError(f"{what}: is a directory; give a file name such as {path / f'{model}.pt'}")
    if path.exists() and not path.is_file():
        raise UserError(f"{what}: is not a regular file")
    check_output_dir(path.parent, what, parents=not explicit)
    return path


def save_checkpoint(model: nn.Module, meta: dict, path: str | Path | None = None) -> Path:
    """Write {format, meta, state_dict} atomically; `meta` must name the model ('model')."""
    path = Path(path) if path is not None else checkpoint_path(meta["model"])
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "meta": meta, "state_dict": state}
    # Serialized in memory first (a few MB): torch.save writes files through C++, whose failure on a full disk
    # is a RuntimeError; Python's own write raises the OSError that atomic_write turns into one line, exit 74.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


class CheckpointError(UserError):
    """A checkpoint that cannot be used; `problem` says how in a word or two, for `list`."""

    def __init__(self, message: str, problem: str = "damaged") -> None:
        super().__init__(message)
        self.problem = problem


def read_checkpoint(model_or_path: str | Path) -> dict:
    """The raw payload, validated; every way a file can be wrong is a CheckpointError naming the file and saying
    what to do. A zoo model name must find that model's checkpoint, not another model's."""
    path = checkpoint_path(model_or_path)
    name = model_or_path if isinstance(model_or_path, str) and model_or_path in list_models() else None
    if not path.is_file():
        hint = f"; train it first: python -m mnist_zoo train {name}" if name else ""
        raise UserError(f"no checkpoint at {path}{hint}")
    again = f"train it again: python -m mnist_zoo train {name}" if name else "train the model again"
    _check_container(path, again)
    try:
        # torch warns about pickle protocols before it refuses a file: the one line the user gets is ours
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    # A damaged archive fails in many ways (fuzzing found AssertionError, KeyError ...): catch them all.
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain data: refused, as unpickling them "
                "could run code (mnist-zoo never writes such a file)",
                "foreign",
            ) from None
        raise CheckpointError(f"{path} is damaged: torch cannot read it ({first_line(e)}); {again}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an mnist-zoo checkpoint (format {FORMAT!r} expected)", "foreign"
        )
    meta, state = payload.get("meta"), payload.get("state_dict")
    if not isinstance(meta, dict) or meta.get("model") not in list_models():
        raise CheckpointError(f"{path}: its metadata names no zoo model; {again}")
    if not _plain(meta):
        raise CheckpointError(f"{path}: its metadata is not plain data (strings, numbers, lists); {again}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: its state_dict is not a set of tensors; {again}")
    if name is not None and meta["model"] != name:
        raise CheckpointError(
            f"{path} holds a {meta['model']!r} model, not {name!r} (a copied or renamed file?): move it away, "
            f"then train {name}: python -m mnist_zoo train {name}",
            "wrong model",
        )
    bad = [
        k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not v.isfinite().all()
    ]
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or infinity in {bad[0]}): the training that made it "
            f"diverged; {again} (with a lower --lr)",
            "not finite",
        )
    return payload


def _check_container(path: Path, again: str) -> None:
    """torch.save writes a zip archive. Anything else is refused before torch sees it, with a reason in words
    (torch's own would be 'Invalid argument', an unpickling error, or a warning about pickle protocols)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e})") from None
    if not head:
        raise CheckpointError(f"{path} is an empty file (0 bytes); {again}")
    if head.startswith(b"\x80"):
        raise CheckpointError(
            f"{path} is a bare pickle (or a torch file in the pre-1.6 format), not an mnist-zoo checkpoint: "
            "refused unread, as unpickling it could run code",
            "foreign",
        )
    if head != b"PK\x03\x04":
        raise CheckpointError(
            f"{path} is not a checkpoint: not the zip archive that torch.save writes", "foreign"
        )
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} is truncated or damaged ({size:,} bytes, its zip directory is missing); {again}"
        )


def _plain(meta: dict) -> bool:
    """Metadata must be plain JSON data: it is printed in records and artifact metadata."""
    try:
        json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def load_checkpoint(model_or_path: str | Path, expect_model: str | None = None) -> tuple[nn.Module, dict]:
    """(model in eval mode on the CPU, metadata). With expect_model, a checkpoint of another model is an error
    (a zoo model name expects its own model already)."""
    path = checkpoint_path(model_or_path)
    payload = read_checkpoint(model_or_path)
    meta, state = payload["meta"], payload["state_dict"]
    if expect_model is not None and meta["model"] != expect_model:
        raise CheckpointError(f"{path} holds a {meta['model']!r} model, not {expect_model!r}", "wrong model")
    model = get_model(meta["model"])
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        why = _mismatch(model.state_dict(), state) or " ".join(str(e).split())[:160]
        raise CheckpointError(
            f"{path}: its weights do not fit a {meta['model']} model ({why}); the file was edited or made by "
            "another version: train the model again"
        ) from None
    return model.eval(), meta


def _mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """How a state_dict differs from the model's: missing and unexpected names, then wrong shapes."""

    def names(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    parts = [f"missing {names(missing)}"] if missing else []
    parts += [f"unexpected {names(unexpected)}"] if unexpected else []
    shapes = [
        (k, v.shape, state[k].shape) for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    parts += [f"{k} is {list(got)}, not {list(want)}" for k, want, got in shapes[:3]]
    return "; ".join(parts)
