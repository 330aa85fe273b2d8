"""Fixtures shared by the unit tests (tests/) and the benchmarks (bench/).

The data comes from $MNIST_ZOO_DATA when set (CI points it at ../shared/data/mnist), else from
../shared/data/mnist beside the checkout, else the normal chain (cache, download, npm)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnist_zoo import data

SHARED = Path(__file__).resolve().parent.parent / "shared" / "data" / "mnist"
if not os.environ.get("MNIST_ZOO_DATA") and SHARED.is_dir():
    os.environ["MNIST_ZOO_DATA"] = str(SHARED)


@pytest.fixture(scope="session")
def train_split() -> data.Split:
    return data.load("train")


@pytest.fixture(scope="session")
def test_split() -> data.Split:
    return data.load("test")
