"""One training run, saved: the unit that `cv`, `evaluate --seeds` and `compare` are built from.

    >>> from mnist_zoo.runs import RunStore
    >>> store = RunStore("reports")
    >>> record = store.run("lenet", recipe, train_split, test_split, seed=0, label="seed0", config={...})

Every finished run is written atomically to <report dir>/runs/<model>-<label>-<key>.json, where the key is a
hash of everything that decides its result (model, recipe, seed, which images, data, torch, device, threads).
So Ctrl-C loses only the run in progress, and the same command again reuses what is done (--fresh retrains);
`compare` reuses the runs of an earlier `evaluate --seeds` with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from mnist_zoo.data import DATA_SHA256, Split
from mnist_zoo.train import Progress, Recipe, steps_for, train
from mnist_zoo.util import UserError, atomic_write, environment

REPORT_DIR = "reports"  # relative to the working directory; $MNIST_ZOO_REPORTS or --report-dir override it
RUN_SCHEMA = "mnist-zoo/run/1"
SUBSET_SEED = 0  # --train-size draws the same subset for every model and seed, so they stay comparable


def report_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("MNIST_ZOO_REPORTS") or REPORT_DIR)


def stratified_subset(labels: torch.Tensor, size: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Indices of `size` images whose digit mix matches the whole set (each class within one image of its share).

    Each class is shuffled, then images are ranked by how far through their own class they come, so any prefix
    of that ranking takes the same fraction of every class."""
    n = len(labels)
    if not 1 <= size <= n:
        raise UserError(f"--train-size must be between 1 and {n:,}, got {size:,}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    lab = labels.cpu()[perm]
    order = torch.sort(lab, stable=True).indices  # class-major, shuffled within each class
    counts = torch.bincount(lab, minlength=10)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[lab[order]]
    key = (rank.double() + 0.5) / counts[lab[order]].double()
    take = order[torch.argsort(key, stable=True)[:size]]
    return torch.sort(perm[take]).values


def encode_predictions(predictions: torch.Tensor) -> str:
    """10,000 predicted digits as a 10,000-character string: compact, exact, and readable JSON."""
    return "".join(map(str, predictions.tolist()))


def decode_predictions(text: str) -> torch.Tensor:
    return torch.tensor([int(c) for c in text], dtype=torch.long)


class RunStore:
    """Finished runs on disk, keyed by their settings; `fresh=True` ignores (and then replaces) saved ones."""

    def __init__(self, directory: str | Path | None = None, fresh: bool = False):
        self.directory = report_dir(directory) / "runs"
        self.fresh = fresh
        self.reused = 0  # runs read back from disk by this store
        self.saved = 0  # runs trained and written by this store

    def path(self, model: str, label: str, key: str) -> Path:
        return self.directory / f"{model}-{label}-{key}.json"

    def _load(self, path: Path, key: str) -> dict | None:
        """A saved run with this key, or None; a damaged or foreign file is treated as absent (and retrained)."""
        if self.fresh or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("schema") != RUN_SCHEMA or record.get("key") != key:
            return None
        return record

    def run(
        self,
        model: str,
        recipe: Recipe,
        train_split: Split,
        eval_split: Split,
        *,
        seed: int,
        label: str,
        config: dict,
        device: torch.device | str = "cpu",
        progress: Progress | None = None,
        keep_predictions: bool = False,
    ) -> dict:
        """Train (or reuse) one run; returns its record. `config` describes the images (which subset, fold)."""
        device = torch.device(device)
        settings = {
            "model": model,
            "recipe": asdict(recipe),
            "seed": seed,
            "data_sha256": DATA_SHA256,
            **config,
        }
        settings.update(
            torch_version=str(torch.__version__), device=device.type, threads=torch.get_num_threads()
        )
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        path = self.path(model, label, key)
        saved = self._load(path, key)
        steps = steps_for(len(train_split), recipe)
        if saved is not None:
            self.reused += 1
            if progress is not None:
                progress.skip(label, steps)
            return {**saved, "reused": True, "run_file": str(path)}
        on_step = progress.run(label, steps) if progress is not None else None
        result = train(model, recipe, train_split, eval_split, seed=seed, device=device, on_step=on_step)
        assert result.final is not None
        record = {
            "schema": RUN_SCHEMA,
            "key": key,
            "model": model,
            "label": label,
            "seed": seed,
            "recipe": asdict(recipe),
            "config": config,
            "train_size": len(train_split),
            "eval_size": len(eval_split),
            "accuracy": result.final.accuracy,
            "loss": result.final.loss,
            "train_seconds": result.train_seconds,
            "images_per_second": result.images_per_second,
            "history": result.history,
            **result.contention,
            "data_sha256": DATA_SHA256,
            **environment(device),
        }
        if keep_predictions:
            record["predictions"] = encode_predictions(result.final.predictions)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record)))
        self.saved += 1
        return {**record, "reused": False, "run_file": str(path)}
