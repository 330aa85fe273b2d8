"""A plugin runtime's cold-start child: started by bench/coldstart.py as `python -m bench.plugin_child RUNTIME
FILE MODEL THREADS`, it builds the runtime with its own factory (bench.runtimes.Runtime.load, so it imports
torch) and answers as coldstart.child says.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from bench import coldstart
from bench.runtimes import Job, runtime
from mnist_zoo.checkpoint import load_checkpoint
from mnist_zoo.util import guarded


def load(name: str, path: str, model: str, threads: int) -> Callable:
    """numpy images -> numpy logits. A runtime of the checkpoint gets its weights (the file names its model)."""
    found = runtime(name)
    module = load_checkpoint(path)[0] if found.artifact == "checkpoint" else None
    torch.set_num_threads(threads)
    predictor = found.load(Job(Path(path), module, torch.device("cpu"), threads, batch=1))
    return lambda x: predictor.logits(torch.from_numpy(x)).numpy()


if __name__ == "__main__":
    name, path, model, threads = sys.argv[1:]
    sys.exit(guarded(lambda: coldstart.child(name, path, model, int(threads), coldstart.PEAK_BATCH, load)))
