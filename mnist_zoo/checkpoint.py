"""Checkpoints: a state_dict plus the metadata that says what it is, written atomically, read with weights_only.

Default place: $MNIST_ZOO_CHECKPOINTS, else <cache>/checkpoints (cache = $XDG_CACHE_HOME/mnist-zoo,
default ~/.cache/mnist-zoo), one file per model: lenet.pt, dnn.pt, mlp.pt.
>>> from mnist_zoo.checkpoint import load_checkpoint
>>> model, meta = load_checkpoint("lenet")      # by model name, or by path
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from mnist_zoo.data import cache_dir
from mnist_zoo.models import get_model, list_models
from mnist_zoo.util import UserError, atomic_write

FORMAT = "mnist-zoo/checkpoint/1"


def checkpoint_dir() -> Path:
    return Path(os.environ.get("MNIST_ZOO_CHECKPOINTS") or cache_dir() / "checkpoints")


def checkpoint_path(model_or_path: str | Path) -> Path:
    """A zoo model name maps to its default file; anything else is taken as a path."""
    if isinstance(model_or_path, str) and model_or_path in list_models():
        return checkpoint_dir() / f"{model_or_path}.pt"
    return Path(model_or_path)


def save_checkpoint(model: nn.Module, meta: dict, path: str | Path | None = None) -> Path:
    """Write {format, meta, state_dict} atomically; `meta` must name the model ('model')."""
    path = Path(path) if path is not None else checkpoint_path(meta["model"])
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "meta": meta, "state_dict": state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(model_or_path: str | Path) -> dict:
    """The raw payload, validated; every way a file can be wrong is a UserError naming the file."""
    path = checkpoint_path(model_or_path)
    if not path.is_file():
        name = model_or_path if isinstance(model_or_path, str) and model_or_path in list_models() else None
        hint = f"; train it first: python -m mnist_zoo train {name}" if name else ""
        raise UserError(f"no checkpoint at {path}{hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if "Weights only load failed" in str(e):
            first = "it holds objects that weights-only loading refuses to unpickle"
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a readable checkpoint ({first[:120]}); delete it and train again"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        raise UserError(f"{path} is not an mnist-zoo checkpoint (format {FORMAT!r} expected)")
    meta = payload.get("meta")
    if not isinstance(meta, dict) or meta.get("model") not in list_models():
        raise UserError(f"{path}: checkpoint metadata names no zoo model")
    return payload


def load_checkpoint(model_or_path: str | Path, expect_model: str | None = None) -> tuple[nn.Module, dict]:
    """(model in eval mode on the CPU, metadata). With expect_model, a checkpoint of another model is an error."""
    path = checkpoint_path(model_or_path)
    payload = read_checkpoint(model_or_path)
    meta = payload["meta"]
    if expect_model is not None and meta["model"] != expect_model:
        raise UserError(f"{path} holds a {meta['model']!r} model, not {expect_model!r}")
    model = get_model(meta["model"])
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit model {meta['model']!r} ({first[:120]})") from None
    return model.eval(), meta
