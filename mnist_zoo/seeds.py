"""Retrain with several seeds and compare models on the test set: the numbers behind `evaluate --seeds` and
`compare`.

    python -m mnist_zoo evaluate lenet --seeds 5           # test accuracy mean ± std and a 95% interval
    python -m mnist_zoo compare mlp dnn lenet --seeds 3    # side by side, and which differences are real
    >>> from mnist_zoo.seeds import seed_study, compare_pairs

A seed fixes the initial weights and the shuffling order; the training images and recipe stay the same, so the
spread across seeds is the luck of training. Each model's seed s is trained on the same images in the same
order, and every run is scored on the same 10,000 test images, so two models can be compared image by image.
"""

from __future__ import annotations

from dataclasses import asdict
from itertools import combinations

import torch

from mnist_zoo.data import Split
from mnist_zoo.runs import RunStore, StudyProgress, decode_predictions
from mnist_zoo.stats import mcnemar, summarize, verdict, welch
from mnist_zoo.train import Recipe

DEFAULT_COMPARE_SEEDS = 3  # the fewest that give a spread and an interval; --seeds 5 narrows them
MAX_SEEDS = 100
SEEDS_SCHEMA = "mnist-zoo/seeds/1"
COMPARE_SCHEMA = "mnist-zoo/compare/1"


def seed_study(model: str, recipe: Recipe, train_split: Split, test_split: Split, *, seeds: list[int],
               device: torch.device, store: RunStore, progress: StudyProgress | None = None,
               subset: dict | None = None) -> tuple[dict, list[torch.Tensor]]:  # fmt: skip
    """Train (or reuse) one run per seed; returns (summary, test-set predictions per seed)."""
    runs, predictions = [], []
    for s in seeds:
        config = {"data": "train", "subset": subset, "eval": "test"}
        record = store.run(model, recipe, train_split, test_split, seed=s, label=f"seed{s}", config=config,
                           device=device, progress=progress, keep_predictions=True)  # fmt: skip
        predictions.append(decode_predictions(record["predictions"]))
        runs.append({k: record[k] for k in ("seed", "accuracy", "loss", "train_seconds", "images_per_second",
                                            "history", "reused", "run_file")})  # fmt: skip
    summary = {
        "model": model, "recipe": asdict(recipe), "seeds": list(seeds), "train_images": len(train_split),
        "test_images": len(test_split), "subset": subset, "runs": runs,
        "accuracy": summarize([r["accuracy"] for r in runs]),
        "train_seconds": summarize([r["train_seconds"] for r in runs]),
    }  # fmt: skip
    return summary, predictions


def compare_pairs(
    studies: list[dict], predictions: list[list[torch.Tensor]], labels: torch.Tensor
) -> list[dict]:
    """Every pair of models: McNemar on each seed's answers to the same test images, Welch on the per-seed
    accuracies (2+ seeds), and the verdict in words."""
    labels = labels.cpu()
    pairs = []
    for i, j in combinations(range(len(studies)), 2):
        a, b = studies[i], studies[j]
        tests = [
            mcnemar(pa == labels, pb == labels) for pa, pb in zip(predictions[i], predictions[j], strict=True)
        ]
        scores_a = [r["accuracy"] for r in a["runs"]]
        scores_b = [r["accuracy"] for r in b["runs"]]
        w = welch(scores_a, scores_b) if min(len(scores_a), len(scores_b)) >= 2 else None
        v = verdict(a["model"], scores_a, b["model"], scores_b, tests, w)
        pairs.append({"a": a["model"], "b": b["model"], "difference": a["accuracy"]["mean"] - b["accuracy"]["mean"],
                      "mcnemar": [{"seed": s, **t} for s, t in zip(a["seeds"], tests, strict=True)],
                      "welch": w, **v})  # fmt: skip
    return pairs


def confusion(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """10x10 counts, row = true digit, column = predicted."""
    return torch.bincount(labels.cpu() * 10 + predictions, minlength=100).reshape(10, 10)
