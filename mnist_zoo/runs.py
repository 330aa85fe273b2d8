"""One training run, saved: the unit that `cv`, `evaluate --seeds` and `compare` are built from.

    >>> from mnist_zoo.runs import RunStore
    >>> store = RunStore("reports")
    >>> job = Job("lenet", recipe, seed=0, label="seed0", config={...}, train=("train", None), eval=("test", None))
    >>> [record] = store.run_all([job], {"train": train_split, "test": test_split})

Every finished run is written atomically to <report dir>/runs/<model>-<label>-<key>.json, where the key is a
hash of everything that decides its result (model, recipe, seed, which images, data, torch, device, threads).
So Ctrl-C loses only the run in progress, and the same command again reuses what is done (--fresh retrains);
`compare` reuses the runs of an earlier `evaluate --seeds` with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mnist_zoo.data import DATA_SHA256, Split
from mnist_zoo.train import Progress, Recipe, TrainResult, steps_for, train
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


@dataclass(frozen=True)
class Job:
    """One training run to do, its images named as indices into splits (`data`, e.g. {"train": ..., "test": ...})
    rather than copies: a Ray cluster gets the splits once and each of its tasks only the indices."""

    model: str
    recipe: Recipe
    seed: int
    label: str
    config: dict  # describes the images (which subset, fold), for the run's key
    train: tuple[str, torch.Tensor | None]  # (split name, indices; None = the whole split)
    eval: tuple[str, torch.Tensor | None]
    keep_predictions: bool = False

    def splits(self, data: dict[str, Split]) -> tuple[Split, Split]:
        return tuple(data[n] if i is None else data[n].subset(i) for n, i in (self.train, self.eval))

    def sizes(self, data: dict[str, Split]) -> tuple[int, int]:
        return tuple(len(data[n]) if i is None else len(i) for n, i in (self.train, self.eval))


def outcome(result: TrainResult, keep_predictions: bool = False) -> dict:
    """What a finished run adds to its record, as plain data (it travels back from a Ray worker). The
    environment is the trainer's: its threads, CPU and device."""
    assert result.final is not None
    fields = {"accuracy": result.final.accuracy, "loss": result.final.loss}
    fields.update(train_seconds=result.train_seconds, images_per_second=result.images_per_second)
    fields.update(history=result.history, **result.contention, data_sha256=DATA_SHA256)
    fields.update(environment(result.device))
    if keep_predictions:
        fields["predictions"] = encode_predictions(result.final.predictions)
    return fields


class RunStore:
    """Finished runs on disk, keyed by their settings; `fresh=True` ignores (and then replaces) saved ones.

    `executor` runs many jobs at once (mnist_zoo.cluster.RayExecutor); without one, run_all trains them here,
    one after another. Either way this store, in this process, writes every finished run."""

    def __init__(self, directory: str | Path | None = None, fresh: bool = False, executor=None):
        self.directory = report_dir(directory) / "runs"
        self.fresh = fresh
        self.executor = executor
        self.reused = 0  # runs read back from disk by this store
        self.saved = 0  # runs trained and written by this store

    def path(self, model: str, label: str, key: str) -> Path:
        return self.directory / f"{model}-{label}-{key}.json"

    def locate(self, job: Job, device: torch.device, threads: int) -> tuple[str, Path]:
        """The run's key (a hash of everything that decides its result) and its file."""
        settings = {
            "model": job.model,
            "recipe": asdict(job.recipe),
            "seed": job.seed,
            "data_sha256": DATA_SHA256,
            **job.config,
        }
        settings.update(torch_version=str(torch.__version__), device=device.type, threads=threads)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        return key, self.path(job.model, job.label, key)

    def saved_run(self, path: Path, key: str) -> dict | None:
        """The saved run with this key, marked reused (and counted), or None: then it is to be trained. A damaged
        or foreign file is treated as absent (and retrained)."""
        if self.fresh or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("schema") != RUN_SCHEMA or record.get("key") != key:
            return None
        self.reused += 1
        return {**record, "reused": True, "run_file": str(path)}

    def save(self, job: Job, sizes: tuple[int, int], key: str, path: Path, fields: dict) -> dict:
        """Write a finished run (atomically); `fields` is its outcome()."""
        record = {"schema": RUN_SCHEMA, "key": key, "model": job.model, "label": job.label, "seed": job.seed}
        record.update(recipe=asdict(job.recipe), config=job.config, train_size=sizes[0], eval_size=sizes[1])
        record.update(fields)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record)))
        self.saved += 1
        return {**record, "reused": False, "run_file": str(path)}

    def run(
        self,
        job: Job,
        data: dict[str, Split],
        *,
        device: torch.device | str = "cpu",
        progress: Progress | None = None,
    ) -> dict:
        """Train (or reuse) one run here; returns its record."""
        device = torch.device(device)
        key, path = self.locate(job, device, torch.get_num_threads())
        steps = steps_for(job.sizes(data)[0], job.recipe)
        saved = self.saved_run(path, key)
        if saved is not None:
            if progress is not None:
                progress.skip(job.label, steps)
            return saved
        on_step = progress.run(job.label, steps) if progress is not None else None
        train_split, eval_split = job.splits(data)
        result = train(
            job.model, job.recipe, train_split, eval_split, seed=job.seed, device=device, on_step=on_step
        )
        return self.save(job, job.sizes(data), key, path, outcome(result, job.keep_predictions))

    def run_all(
        self,
        jobs: list[Job],
        data: dict[str, Split],
        *,
        device: torch.device | str = "cpu",
        progress: Progress | None = None,
        on_record: Callable[[int, dict], None] | None = None,
    ) -> list[dict]:
        """Train (or reuse) every job; returns their records in the jobs' order, and calls on_record(i, record)
        in that order as soon as records 0..i are all done (so a summary can be rewritten after each)."""
        if self.executor is not None:
            options = dict(device=torch.device(device), progress=progress, on_record=on_record)
            return self.executor.run_all(self, jobs, data, **options)
        records = []
        for i, job in enumerate(jobs):
            records.append(self.run(job, data, device=device, progress=progress))
            if on_record is not None:
                on_record(i, records[-1])
        return records
