"""Every picture is a valid PNG of the documented pixel size, written atomically (no temporary file left)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_zoo import plots

pytestmark = pytest.mark.skipif(not plots.available(), reason="matplotlib is not installed")


def _png(path, size):
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == size
        img.verify()  # the whole file decodes: not truncated
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def _history(epochs: int, offset: float) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        train = {"epoch": float(e), "train_loss": 1.0 / e + offset, "train_accuracy": 0.9 + 0.01 * e}
        rows.append({**train, "eval_loss": 1.2 / e + offset, "eval_accuracy": 0.89 + 0.01 * e})
    return rows


def test_learning_curves(tmp_path):
    runs = [(f"fold {i}", _history(5, 0.01 * i)) for i in range(1, 6)]
    path = plots.learning_curves(runs, tmp_path / "curves.png", "lenet, 5 folds", heldout="held-out fold")
    _png(path, plots.pixel_size(plots.CURVES_SIZE))


def test_learning_curves_without_heldout_and_one_epoch(tmp_path):
    runs = [("seed 0", [{"epoch": 1.0, "train_loss": 0.3, "train_accuracy": 0.9}])]
    _png(plots.learning_curves(runs, tmp_path / "c.png", "one point"), plots.pixel_size(plots.CURVES_SIZE))


def test_score_boxplot(tmp_path):
    groups = {"mlp": [0.921, 0.925, 0.919], "dnn": [0.975, 0.978, 0.976], "lenet": [0.991]}
    path = plots.score_boxplot(groups, tmp_path / "box.png", "three models", "test set")
    _png(path, plots.pixel_size(plots.BOX_SIZE))


def test_confusion_heatmap(tmp_path):
    counts = torch.eye(10, dtype=torch.long) * 980
    counts[4, 9], counts[7, 2] = 12, 3
    path = plots.confusion_heatmap(counts, tmp_path / "confusion.png", "dnn")
    _png(path, plots.pixel_size(plots.CONFUSION_SIZE))
    perfect = plots.confusion_heatmap(torch.eye(10, dtype=torch.long) * 1000, tmp_path / "p.png", "no errors")
    _png(perfect, plots.pixel_size(plots.CONFUSION_SIZE))


@pytest.mark.parametrize("count", [1, 10, 23, 120])
def test_digit_grid(tmp_path, count):
    images = np.random.default_rng(0).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    captions = [f"{i % 10} → {(i + 1) % 10}" for i in range(count)]
    path = plots.digit_grid(images, captions, tmp_path / "g.png", "t")
    _png(path, plots.pixel_size(plots.grid_figsize(count)))
    # at most MAX_GRID digits, ten to a row: 120 digits make the same 5-row picture as 50
    rows = -(-min(count, plots.MAX_GRID) // plots.GRID_COLUMNS)
    assert plots.grid_figsize(count)[1] == pytest.approx(rows * plots.GRID_CELL + 0.7)
