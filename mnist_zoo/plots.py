"""The harness's pictures, as PNG files of a fixed pixel size: learning curves, score box plots, the confusion
matrix as a heatmap, and grids of digits (the misclassified test digits, or what `predict` fed the model).

    >>> from mnist_zoo import plots
    >>> plots.learning_curves([("fold 1", history), ...], "reports/cv-lenet-curves.png", "lenet, 5-fold cv")
    >>> plots.seed_pictures(study, predictions, test_split, "reports/seeds-lenet")   # all four of a seed study

Each function writes one file atomically and returns its path. matplotlib is an optional dependency
(`pip install mnist-zoo[plots]`): without it, `available()` is False and callers print the numbers only.
The object-oriented API (Figure, no pyplot) keeps no global state and needs no display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mnist_zoo.data import Split
from mnist_zoo.train import confusion_matrix
from mnist_zoo.util import atomic_write

DPI = 100  # pixel size = figure size in inches x DPI (no tight bounding box, so the size is exact and known)
CURVES_SIZE = (12.0, 4.8)
BOX_SIZE = (8.0, 5.0)
CONFUSION_SIZE = (7.5, 6.5)
GRID_COLUMNS, GRID_CELL = 10, 1.15  # digit grids: 10 per row, inches per digit
MAX_GRID = 50  # at most this many digits in one grid


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def pixel_size(figsize: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a figure of `figsize` inches, as written here."""
    return round(figsize[0] * DPI), round(figsize[1] * DPI)


def grid_figsize(count: int) -> tuple[float, float]:
    rows = max(1, math.ceil(min(count, MAX_GRID) / GRID_COLUMNS))
    return GRID_COLUMNS * GRID_CELL, rows * GRID_CELL + 0.7


def _figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI)


def _save(fig, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def learning_curves(
    runs: Sequence[tuple[str, list[dict]]], path: str | Path, title: str, heldout: str = "held-out"
) -> Path:
    """Loss (log scale) and accuracy per epoch: one colour per run, solid = training, dashed = `heldout`."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter

    fig = _figure(CURVES_SIZE)
    ax_loss, ax_acc = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for (_, history), c in zip(runs, colours, strict=True):
        epochs = [row["epoch"] for row in history]
        ax_loss.plot(epochs, [r["train_loss"] for r in history], "-o", color=c, ms=3, lw=1.2)
        ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in history], "-o", color=c, ms=3, lw=1.2)
        if history and "eval_loss" in history[0]:
            ax_loss.plot(epochs, [r["eval_loss"] for r in history], "--s", color=c, ms=3, lw=1.2)
            ax_acc.plot(epochs, [100 * r["eval_accuracy"] for r in history], "--s", color=c, ms=3, lw=1.2)
    ax_loss.set_yscale("log")  # loss falls by an order of magnitude: a log axis shows the late epochs too
    ax_loss.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_loss.yaxis.set_minor_formatter(NullFormatter())
    last = max((row["epoch"] for _, history in runs for row in history), default=1)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (log scale)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(decimals=1))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last + 0.5)
        ax.grid(True, which="major", alpha=0.3)
    handles = [
        Line2D([], [], color=c, lw=2, label=label) for (label, _), c in zip(runs, colours, strict=True)
    ]
    handles += [
        Line2D([], [], color="k", ls="-", marker="o", ms=3, label="training"),
        Line2D([], [], color="k", ls="--", marker="s", ms=3, label=heldout),
    ]
    ax_acc.legend(handles=handles, fontsize=8, loc="lower right", ncol=2 if len(handles) > 8 else 1)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.86, wspace=0.25)
    return _save(fig, path)


def score_boxplot(groups: dict[str, Sequence[float]], path: str | Path, title: str, what: str) -> Path:
    """A box per model of its accuracies (one per seed or fold), every score drawn as a dot over its box."""
    from matplotlib.ticker import PercentFormatter

    fig = _figure(BOX_SIZE)
    ax = fig.subplots()
    names = list(groups)
    values = [[100 * v for v in groups[n]] for n in names]
    ax.boxplot(values, widths=0.5, medianprops={"color": "C1", "lw": 2}, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    for i, vals in enumerate(values, start=1):
        # Evenly spread dots (no random jitter): the same scores always give the same picture.
        offsets = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0.0]
        ax.plot(i + np.asarray(offsets), vals, "o", color="C0", ms=5, alpha=0.8, zorder=3)
        mean, std = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        ax.annotate(
            f"{mean:.2f}% ± {std:.2f}%",
            (i, max(vals)),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    lo, hi = min(map(min, values)), max(map(max, values))
    pad = max(0.05, (hi - lo) * 0.15)
    ax.set_ylim(lo - pad, min(hi + 2 * pad, 100.0))  # room for the labels, but never above 100%
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=2))
    ax.set(ylabel=f"accuracy ({what})", title=title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.1, top=0.9)
    return _save(fig, path)


def confusion_heatmap(confusion: torch.Tensor | np.ndarray, path: str | Path, title: str) -> Path:
    """Rows: true digit, columns: predicted. Mistakes in red (darker = more), correct answers greyed on the
    diagonal: on a single colour scale the ~1,000 correct per digit would drown the handful of errors."""
    from matplotlib.colors import ListedColormap

    counts = np.asarray(confusion, dtype=np.int64)
    off = np.ma.masked_where(np.eye(10, dtype=bool), counts)
    diag = np.ma.masked_where(~np.eye(10, dtype=bool), counts)
    fig = _figure(CONFUSION_SIZE)
    ax = fig.subplots()
    vmax = max(1, int(off.max()) if off.count() else 1)
    image = ax.imshow(off, cmap="Reds", vmin=0, vmax=vmax)
    ax.imshow(diag, cmap=ListedColormap(["#dfe8df"]))
    for t in range(10):
        for p in range(10):
            v = int(counts[t, p])
            if t == p:
                ax.text(
                    p, t, str(v), ha="center", va="center", fontsize=8, fontweight="bold", color="#225522"
                )
            elif v:
                dark = v > 0.6 * vmax
                ax.text(
                    p, t, str(v), ha="center", va="center", fontsize=9, color="white" if dark else "black"
                )
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set(xlabel="predicted digit", ylabel="true digit", title=title)
    fig.colorbar(image, ax=ax, label="misclassified images", fraction=0.046, pad=0.04)
    fig.subplots_adjust(left=0.09, right=0.9, bottom=0.09, top=0.93)
    return _save(fig, path)


def digit_grid(
    images: torch.Tensor | np.ndarray, captions: Sequence[str], path: str | Path, title: str
) -> Path:
    """Up to MAX_GRID 28x28 digits, dark ink on white, ten to a row, each with its caption."""
    images = np.asarray(images)[:MAX_GRID]
    captions = list(captions)[:MAX_GRID]
    fig = _figure(grid_figsize(len(images)))
    rows = max(1, math.ceil(len(images) / GRID_COLUMNS))
    axes = np.atleast_1d(fig.subplots(rows, GRID_COLUMNS)).reshape(-1)
    for i, ax in enumerate(axes):
        if i >= len(images):
            ax.set_axis_off()
            continue
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(captions[i], fontsize=8, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a faint frame shows the 28x28 field the model sees
            spine.set_color("#bbbbbb")
    fig.suptitle(title, fontsize=11)
    top = 1 - 0.55 / fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.1, hspace=0.45)
    return _save(fig, path)


def seed_pictures(study: dict, predictions: list[torch.Tensor], test: Split, stem: str) -> dict[str, Path]:
    """Learning curves and score box plot of every seed; confusion matrix and misclassified digits of the first."""
    m, runs = study["model"], study["runs"]
    first, seed0, accuracy0 = predictions[0], runs[0]["seed"], runs[0]["accuracy"]
    wrong = (first != test.labels).nonzero().flatten()
    captions = [f"{int(test.labels[i])} → {int(first[i])}" for i in wrong.tolist()]
    curves = [(f"seed {r['seed']}", r["history"]) for r in runs]
    scores = {m: [r["accuracy"] for r in runs]}
    shown = f"{min(len(wrong), MAX_GRID)} of {len(wrong)} misclassified test digits (true → predicted)"
    right = f"{accuracy0:.2%} of {len(test):,} test images right"
    return {
        "curves": learning_curves(
            curves,
            f"{stem}-curves.png",
            f"{m}: {len(runs)} seed(s), test set after each epoch",
            heldout="test",
        ),
        "scores": score_boxplot(scores, f"{stem}-scores.png", f"{m}: {len(runs)} seed(s)", "test set"),
        "confusion": confusion_heatmap(
            confusion_matrix(first, test.labels), f"{stem}-confusion.png", f"{m} (seed {seed0}): {right}"
        ),
        "errors": digit_grid(
            test.images[wrong], captions, f"{stem}-errors.png", f"{m} (seed {seed0}): {shown}"
        ),
    }
