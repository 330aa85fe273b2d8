"""One training run, saved: the unit that `cv`, `evaluate --seeds` and `compare` are built from.

    >>> from mnist_zoo.runs import Job, RunStore, Sequential, run_jobs
    >>> cpu = torch.device("cpu")
    >>> store, here = RunStore("reports", device=cpu, threads=2), Sequential(cpu, threads=2)
    >>> job = Job("lenet", recipe, seed=0, label="seed0", config={...}, train=("train", None), eval=("test", None))
    >>> [record] = run_jobs([job], {"train": train_split, "test": test_split}, store, here)

Every finished run is written atomically to <report dir>/runs/<model>-<label>-<key>.json, where the key is a
hash of everything that decides its result (model, recipe, seed, which images, data, torch, device, threads).
So Ctrl-C loses only the run in progress, and the same command again reuses what is done (--fresh retrains);
`compare` reuses the runs of an earlier `evaluate --seeds` with the same settings. The store finds what is
saved; an executor (Sequential here, cluster.RayExecutor on Ray) gets only the jobs left, and this process saves
each run it returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from mnist_zoo.data import DATA_SHA256, Split
from mnist_zoo.progress import Progress
from mnist_zoo.recipes import Recipe, steps_for
from mnist_zoo.schema import read_json
from mnist_zoo.train import TrainResult, train
from mnist_zoo.util import UserError, atomic_write, environment

REPORT_DIR = "reports"  # relative to the working directory; $MNIST_ZOO_REPORTS or --report-dir override it
RUN_SCHEMA = "mnist-zoo/run/1"
# What a saved run must hold to be reused: the fields the studies read, with their types.
_NUMBER = {"type": "number"}
RECORD_SCHEMA = {
    "type": "object",
    "required": [
        "schema",
        "key",
        "seed",
        "accuracy",
        "loss",
        "train_seconds",
        "images_per_second",
        "history",
    ],
    "properties": {
        "schema": {"const": RUN_SCHEMA},
        "key": {"type": "string"},
        "seed": {"type": "integer"},
        **dict.fromkeys(("accuracy", "loss", "train_seconds", "images_per_second"), _NUMBER),
        "history": {"type": "array", "items": {"type": "object"}},
        "predictions": {"type": "string", "pattern": "^[0-9]*$"},
    },
}
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
    fields.update(precision=result.precision, precision_reason=result.precision_reason)
    fields.update(history=result.history, **result.contention, data_sha256=DATA_SHA256)
    fields.update(environment(result.device, result.threads))
    if keep_predictions:
        fields["predictions"] = encode_predictions(result.final.predictions)
    return fields


class RunStore:
    """Finished runs on disk, keyed by their settings and by where they train (`device`, `threads`): `find` says
    which jobs are done, `save` writes one that finished. `fresh=True` ignores (and then replaces) saved runs."""

    def __init__(
        self, directory: str | Path | None = None, *, device: torch.device, threads: int, fresh: bool = False
    ) -> None:
        self.directory = report_dir(directory) / "runs"
        self.device, self.threads, self.fresh = torch.device(device), threads, fresh
        self.reused = 0  # runs read back from disk by this store
        self.saved = 0  # runs trained and written by this store

    def key(self, job: Job) -> str:
        """A hash of everything that decides the run's result."""
        settings = {
            "model": job.model,
            "recipe": asdict(job.recipe),
            "seed": job.seed,
            "data_sha256": DATA_SHA256,
            **job.config,
        }
        settings.update(torch_version=str(torch.__version__), device=self.device.type, threads=self.threads)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def path(self, job: Job) -> Path:
        return self.directory / f"{job.model}-{job.label}-{self.key(job)}.json"

    def find(self, job: Job) -> dict | None:
        """The saved run of this job, marked reused (and counted), or None: then it is to be trained. A damaged
        or foreign file is treated as absent (and retrained)."""
        path = self.path(job)
        if self.fresh or not path.is_file():
            return None
        try:
            record = read_json(path, RECORD_SCHEMA)
        except UserError:  # too large, too deep, not JSON, or a field of the wrong type
            return None
        if record["key"] != self.key(job):
            return None
        self.reused += 1
        return {**record, "reused": True, "run_file": str(path)}

    def save(self, job: Job, sizes: tuple[int, int], fields: dict) -> dict:
        """Write a finished run (atomically); `fields` is its outcome()."""
        path = self.path(job)
        record = {"schema": RUN_SCHEMA, "key": self.key(job), "model": job.model, "label": job.label}
        record.update(seed=job.seed, recipe=asdict(job.recipe), config=job.config)
        record.update(train_size=sizes[0], eval_size=sizes[1], **fields)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record)))
        self.saved += 1
        return {**record, "reused": False, "run_file": str(path)}


class Executor(Protocol):
    def run(self, jobs: dict[int, Job], data: dict[str, Split], progress: Progress | None) -> Iterator[tuple]:
        """Train every job; yield (its index, its outcome()) as each finishes, in any order."""
        ...


class Sequential:
    """Train the jobs here, one after another, on `threads` threads of `device`."""

    def __init__(self, device: torch.device, threads: int) -> None:
        self.device, self.threads = device, threads

    def run(self, jobs: dict[int, Job], data: dict[str, Split], progress: Progress | None) -> Iterator[tuple]:
        for i, job in jobs.items():
            steps = steps_for(job.sizes(data)[0], job.recipe)
            on_step = progress.tracker(job.label, steps) if progress is not None else None
            train_split, eval_split = job.splits(data)
            options = dict(seed=job.seed, device=self.device, threads=self.threads, on_step=on_step)
            result = train(job.model, job.recipe, train_split, eval_split, **options)
            yield i, outcome(result, job.keep_predictions)


def run_jobs(
    jobs: list[Job],
    data: dict[str, Split],
    store: RunStore,
    executor: Executor,
    *,
    progress: Progress | None = None,
    on_record: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Reuse every job `store` has saved, train the others on `executor` and save them as they finish; returns
    the records in the jobs' order, and calls on_record(i, record) in that order as soon as records 0..i are all
    in (so that a summary can be rewritten after each). Ctrl-C keeps every run saved so far."""
    records: list[dict | None] = [store.find(job) for job in jobs]
    todo = {i: job for i, job in enumerate(jobs) if records[i] is None}
    if progress is not None:
        for i, job in enumerate(jobs):
            if i not in todo:
                progress.skip(job.label, steps_for(job.sizes(data)[0], job.recipe))
    reported = 0

    def report() -> None:
        nonlocal reported
        while reported < len(jobs) and records[reported] is not None:
            if on_record is not None:
                on_record(reported, records[reported])
            reported += 1

    report()
    if todo:
        with contextlib.closing(executor.run(todo, data, progress)) as finished:
            for i, fields in finished:
                records[i] = store.save(jobs[i], jobs[i].sizes(data), fields)
                report()
    return records
