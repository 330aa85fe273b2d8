"""Compare training runs: retrain over seeds, score every run on the same test images, and say which
differences are real. The numbers behind `evaluate --seeds` and `compare`.

    python -m mnist_zoo evaluate lenet --seeds 5           # test accuracy mean ± std and a 95% interval
    python -m mnist_zoo compare mlp dnn lenet --seeds 3    # side by side, and which differences are real
    >>> from mnist_zoo.compare import summarize, mcnemar, welch
    >>> summarize([0.990, 0.992, 0.991])["ci_low"]          # 95% interval of the mean
    >>> mcnemar(correct_a, correct_b)["p_value"]             # bool tensors/lists, one entry per test image

A seed fixes the initial weights and the shuffling order; the training images and recipe stay the same, so the
spread across seeds is the luck of training. Each model's seed s is trained on the same images in the same
order, and every run is scored on the same 10,000 test images, so two models can be compared image by image.

The statistics: mean ± std with a Student-t confidence interval, the exact McNemar test on two models' answers
to the same test images, Welch's t-test on per-seed scores, and a verdict in words. The distributions come from
scipy.stats; this module chooses the tests, handles the degenerate cases (one seed, no spread, no
disagreements) and says what they mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from itertools import combinations

import numpy as np
import torch
from scipy import stats as sps

from mnist_zoo.recipes import Recipe
from mnist_zoo.runs import Job, decode_predictions

DEFAULT_COMPARE_SEEDS = 3  # the fewest that give a spread and an interval; --seeds 5 narrows them
MAX_SEEDS = 100
SEEDS_SCHEMA = "mnist-zoo/seeds/1"
COMPARE_SCHEMA = "mnist-zoo/compare/1"
# What a study keeps of each run's record.
RUN_FIELDS = (
    "seed",
    "accuracy",
    "loss",
    "train_seconds",
    "images_per_second",
    "history",
    "reused",
    "run_file",
)

CONFIDENCE = 0.95  # for every interval
ALPHA = 0.05  # a difference is called significant when p < ALPHA


def _clean(x: float) -> float | None:
    """numpy/nan -> plain float or None, so results go straight into JSON."""
    x = float(x)
    return None if math.isnan(x) else x


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """n, mean, sample std (n-1), and the t-interval of the mean; std and interval are None for fewer than 2."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        raise ValueError("summarize() needs at least one value")
    out = {
        "n": n,
        "mean": float(v.mean()),
        "min": float(v.min()),
        "max": float(v.max()),
        "confidence": confidence,
    }
    out.update(dict.fromkeys(("std", "sem", "t_critical", "ci_low", "ci_high")))
    if n >= 2:
        std = float(v.std(ddof=1))
        sem = std / math.sqrt(n)
        t = float(sps.t.ppf((1 + confidence) / 2, n - 1))
        out.update(
            std=std, sem=sem, t_critical=t, ci_low=out["mean"] - t * sem, ci_high=out["mean"] + t * sem
        )
    return out


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact McNemar test: do two models, scored on the same images, disagree more one way than the other?

    Only the images where exactly one model is right carry information: a_only (A right, B wrong) and b_only.
    If the models were equally good, each such image would be a fair coin, so p is the two-sided binomial
    test of a_only successes in a_only + b_only tosses of p = 0.5."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs answers to the same images: {a.shape} vs {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = float(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    both, neither = int((a & b).sum()), int((~a & ~b).sum())
    counts = {"images": int(a.size), "a_only": a_only, "b_only": b_only, "both": both, "neither": neither}
    return {"test": "McNemar exact", **counts, "p_value": min(1.0, p)}


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Welch's t-test (unequal variances) of mean(a) - mean(b), with its confidence interval.

    Seed s of model A and seed s of model B share nothing but a number, so the scores are treated as two
    independent samples rather than pairs. Needs at least 2 scores on each side; p is None without any spread."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("Welch's t-test needs at least 2 scores per model")
    diff = float(x.mean() - y.mean())
    out = {"test": "Welch t", "difference": diff, "confidence": confidence}
    out.update(dict.fromkeys(("p_value", "df", "ci_low", "ci_high")))
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if va + vb == 0:  # identical scores on every seed: no spread to test against
        return out
    r = sps.ttest_ind(x, y, equal_var=False)
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = float(sps.t.ppf((1 + confidence) / 2, df)) * math.sqrt(va + vb)
    out.update(p_value=_clean(r.pvalue), df=float(df), ci_low=diff - half, ci_high=diff + half)
    return out


def format_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(
    name_a: str,
    scores_a: Sequence[float],
    name_b: str,
    scores_b: Sequence[float],
    mcnemars: Sequence[dict],
    welch_result: dict | None,
    alpha: float = ALPHA,
) -> dict:
    """Combine the tests for one pair into {significant, better, words}.

    Significant means: McNemar significant, in the same direction, for every seed pair, and (with 2+ seeds)
    Welch's test significant too. The first asks "is this gap bigger than the luck of which test images were
    drawn?", the second "is it bigger than the luck of the seed?"; a learner needs both before calling a winner."""
    mean_a, mean_b = float(np.mean(scores_a)), float(np.mean(scores_b))
    better, worse = (name_a, name_b) if mean_a >= mean_b else (name_b, name_a)
    hi, lo = max(mean_a, mean_b), min(mean_a, mean_b)
    gap = f"{(hi - lo) * 100:.2f} points ({hi:.2%} vs {lo:.2%})"
    sign = 1 if mean_a >= mean_b else -1
    # A seed counts for the better model only if its own disagreements lean the same way.
    agree = [m for m in mcnemars if m["p_value"] < alpha and sign * (m["a_only"] - m["b_only"]) > 0]
    n_seeds, mc_ok = len(mcnemars), len(agree) == len(mcnemars) and len(mcnemars) > 0
    worst_p = max(m["p_value"] for m in mcnemars) if mcnemars else None
    welch_p = welch_result["p_value"] if welch_result else None
    welch_ok = welch_p is not None and welch_p < alpha
    images = f"on the same {mcnemars[0]['images']:,} test images" if mcnemars else "on the test images"
    seeds = f"McNemar {format_p(worst_p)}" + (f" in the worst of {n_seeds} seeds" if n_seeds > 1 else "")
    if welch_result is None:  # one seed: only the test-image question can be answered
        if mc_ok:
            words = (
                f"{better} beats {worse} by {gap}: significant {images} ({seeds}). One seed only, so "
                f"this cannot rule out a lucky seed; use --seeds 3 or more."
            )
        else:
            words = (
                f"{better} and {worse} are not significantly different: a gap of {gap} is within what "
                f"chance gives {images} ({seeds}). One seed only; more seeds give a firmer answer."
            )
        return {"significant": mc_ok, "better": better if mc_ok else None, "words": words}
    across = f"Welch {format_p(welch_p)} across seeds"
    if mc_ok and welch_ok:
        words = (
            f"{better} beats {worse} by {gap}. Significant: more than the luck of the test images "
            f"({seeds}) and more than the luck of the seed ({across})."
        )
    elif welch_ok:
        words = (
            f"{better} scores higher than {worse} on average by {gap} ({across}), but {images} the gap "
            f"is significant in only {len(agree)} of {n_seeds} seeds: a small, consistent edge, not a "
            f"clear win."
        )
    elif mc_ok:
        words = (
            f"{better} was right more often than {worse} {images} ({seeds}), but its {gap} lead is not "
            f"bigger than the seed-to-seed spread ({across}): not a reliable difference yet; try more "
            f"seeds."
        )
    else:
        words = (
            f"{better} and {worse} are not significantly different: a gap of {gap} is within what chance "
            f"gives ({seeds}; {across}). Treat them as equal on this evidence."
        )
    significant = mc_ok and welch_ok
    return {"significant": significant, "better": better if significant else None, "words": words}


def seed_jobs(model: str, recipe: Recipe, seeds: list[int], subset: dict | None = None) -> list[Job]:
    """One run per seed: trained on the "train" split, scored on the "test" split (its predictions kept)."""
    config = {"data": "train", "subset": subset, "eval": "test"}
    whole = ("train", None), ("test", None)
    return [Job(model, recipe, s, f"seed{s}", config, *whole, keep_predictions=True) for s in seeds]


def seed_study(
    jobs: list[Job], records: list[dict], train_images: int, test_images: int, subset: dict | None = None
) -> tuple[dict, list[torch.Tensor]]:
    """The summary of one model's seed runs (seed_jobs and their records); returns (summary, test-set
    predictions per seed)."""
    runs = [{k: r[k] for k in RUN_FIELDS} for r in records]
    predictions = [decode_predictions(r["predictions"]) for r in records]
    summary = {"model": jobs[0].model, "recipe": asdict(jobs[0].recipe), "seeds": [j.seed for j in jobs]}
    summary.update(subset=subset, train_images=train_images, test_images=test_images, runs=runs)
    summary["accuracy"] = summarize([r["accuracy"] for r in runs])
    summary["train_seconds"] = summarize([r["train_seconds"] for r in runs])
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
        difference = a["accuracy"]["mean"] - b["accuracy"]["mean"]
        rows = [{"seed": s, **t} for s, t in zip(a["seeds"], tests, strict=True)]
        pairs.append(
            {"a": a["model"], "b": b["model"], "difference": difference, "mcnemar": rows, "welch": w, **v}
        )
    return pairs
