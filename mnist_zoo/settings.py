"""The settings every command shares, resolved once from the command line: device, threads, data, output.

    >>> settings = Settings.resolve(args)      # after the command's own input is checked: it may print a note
    >>> fit(..., device=settings.device, threads=settings.threads)

Resolving picks the device ('auto': CUDA when present), the thread count (--threads, else one per CPU that other
processes leave idle; 1 per run with --ray; the machine's share under torchrun) and pins torch to it, once. From
there on the count travels as a number: every result records the threads it was given, never a global read back.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from mnist_zoo import cluster
from mnist_zoo.cpu import set_threads
from mnist_zoo.util import resolve_device


@dataclass(frozen=True)
class Settings:
    device: torch.device
    threads: int
    data_dir: str | None = None  # None: $MNIST_ZOO_DATA, then the cache, a download, npm (data.py)
    json: bool = False  # one JSON object on stdout, nothing else there
    progress: bool = True  # progress bars on stderr
    ray: str | None = None  # with --ray: cluster.LOCAL or the Ray address given

    @property
    def address(self) -> str | None:
        """The Ray address to connect to: None starts a local Ray."""
        return None if self.ray in (None, cluster.LOCAL) else self.ray

    @classmethod
    def resolve(
        cls, args: argparse.Namespace, *, default_threads: int | None = None, ray: str | None = None
    ) -> Settings:
        """The command line's settings. Call it once the command's input is checked, so that bad input is one line
        before any note (a busy machine's fewer threads are said on stderr). `default_threads` replaces the
        idle-CPU count when --threads is not given (torchrun's share of the machine); `ray` replaces --ray."""
        device = resolve_device(getattr(args, "device", "auto"))
        threads = getattr(args, "threads", None)
        ray = ray or getattr(args, "ray", None)
        if ray is not None:
            cluster.import_ray()  # checked now, so that a missing Ray is one line before any work
            default_threads = cluster.DEFAULT_THREADS
        threads = set_threads(default_threads if threads is None else threads)
        as_json = bool(getattr(args, "json", False))
        progress = not (getattr(args, "no_progress", False) or as_json)
        return cls(device, threads, getattr(args, "data_dir", None), as_json, progress, ray)
