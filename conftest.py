"""Fixtures shared by the unit tests (tests/) and the benchmarks (bench/): the data, the browser.

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


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Playwright, one for the session (tests/test_web.py, bench/test_web.py)."""
    from export import web_browser

    try:
        with web_browser.chromium() as b:
            yield b
    except web_browser.Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def ort_web_files() -> dict[str, bytes]:
    """onnxruntime-web's files (export/web.py: from npm, verified, cached); skipped with the reason without them."""
    from export import web
    from mnist_zoo.util import UserError

    try:
        return web.ort_web_files()
    except UserError as e:
        pytest.skip(f"onnxruntime-web unavailable: {e}")
