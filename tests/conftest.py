"""Shared fixtures. Tests never touch the user's checkpoints: MNIST_ZOO_CHECKPOINTS points at a temporary
directory for each test. The data comes from $MNIST_ZOO_DATA when set (CI points it at ../shared/data/mnist),
else from ../shared/data/mnist beside the checkout, else the normal chain (cache, download, npm)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mnist_zoo import data
from mnist_zoo.checkpoint import save_checkpoint
from mnist_zoo.train import recipe_for, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
if not os.environ.get("MNIST_ZOO_DATA") and SHARED.is_dir():
    os.environ["MNIST_ZOO_DATA"] = str(SHARED)


@pytest.fixture(autouse=True)
def _isolated_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "checkpoints"
    monkeypatch.setenv("MNIST_ZOO_CHECKPOINTS", str(directory))
    return directory


@pytest.fixture(scope="session")
def train_split() -> data.Split:
    return data.load("train")


@pytest.fixture(scope="session")
def test_split() -> data.Split:
    return data.load("test")


@pytest.fixture(scope="session")
def small_trained(train_split, test_split, tmp_path_factory):
    """factory(name) -> (model, meta, checkpoint path): trained for 1 epoch on 12,000 images (seconds, not a
    benchmark), cached for the session. Accurate enough (> 85%) that export parity is checked on real logits."""
    cache: dict[str, tuple] = {}
    directory = tmp_path_factory.mktemp("small-checkpoints")

    def make(name: str):
        if name not in cache:
            subset = train_split.subset(torch.arange(12_000))
            # one epoch of 94 steps is too short a warm-up for lenet's peak lr 0.1: halve it here
            recipe = recipe_for(name, epochs=1, lr=0.05 if name == "lenet" else None)
            result = train(name, recipe, subset, test_split, seed=0)
            meta = {"model": name, "recipe": "default", "epochs": 1, "seed": 0,
                    "test_accuracy": result.final.accuracy, "data_sha256": data.DATA_SHA256,
                    "torch_version": str(torch.__version__)}  # fmt: skip
            path = save_checkpoint(result.model, meta, directory / f"{name}.pt")
            cache[name] = (result.model, meta, path)
        return cache[name]

    return make
