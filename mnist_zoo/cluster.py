"""Many independent training runs at once on Ray: the folds of `cv`, the seeds of `evaluate --seeds` and `compare`.

    python -m mnist_zoo cv lenet --folds 10 --ray                 # a local Ray on the CPUs available here
    python -m mnist_zoo compare --seeds 10 --ray auto             # the Ray cluster this machine belongs to
    python -m mnist_zoo evaluate lenet --seeds 5 --ray ray://head:10001
    >>> cpu = torch.device("cpu")
    >>> store, on_ray = RunStore("reports", device=cpu, threads=1), RayExecutor(None, cpu, threads=1)
    >>> records = run_jobs(jobs, {"train": train_split, "test": test_split}, store, on_ray)

A cluster is any Ray reachable at ADDRESS (docs/scaling.md, "On a cluster", says how to start one;
tests/cluster_fixtures.py starts a real two-node one on one machine). Each run's record says which Ray node
trained it (`ray_node_id`).

Each run is one Ray task asking for `threads` CPUs (a GPU on CUDA), so Ray runs as many at once as the cluster
has room for. The uint8 splits go to the object store once; a task gets only its indices into them, so workers
need no copy of MNIST. Tasks return plain numbers and the driver writes every finished run into the runs store,
exactly as the sequential path does: a run's key, record and result are the same either way for the same seed,
recipe and thread count (training is deterministic), so Ctrl-C and re-runs behave as they do without Ray. A run
whose worker or node dies is tried again (on another node if need be); one that is lost all the same is one line
naming it, with every finished run saved, so the same command again trains only the rest.
Ray is an optional extra (pip install 'mnist-zoo[ray]') and is imported only when --ray is given.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

from mnist_zoo import cpu
from mnist_zoo.data import Split
from mnist_zoo.progress import Progress
from mnist_zoo.recipes import steps_for
from mnist_zoo.runs import Job, outcome
from mnist_zoo.train import train
from mnist_zoo.util import UserError, err, first_line

EXTRA = "pip install 'mnist-zoo[ray]'"
LOCAL = "local"  # --ray with no address: a local Ray on the CPUs available here
# Threads per run when --ray is given without --threads: on a CPU, one run per core trains more images a second
# in all than fewer runs with more threads each (a small model's kernels scale poorly across threads).
DEFAULT_THREADS = 1
# A run whose worker process or node dies (a machine lost, memory exhausted) is started again this many times
# before the driver gives it up; errors raised by the training itself (a diverged run) are never retried.
RETRIES = 2
# A TCP connect to ADDRESS first, for this long: Ray itself waits minutes on an address where nothing listens.
REACH_SECONDS = 5
CLIENT_ATTEMPTS = 2  # Ray Client connections tried (see _init)


def import_ray(why: str = "--ray") -> ModuleType:
    """Ray, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"{why} needs Ray, which is not installed: {EXTRA}") from None
    return ray


def check_address(address: str | None) -> None:
    """None (a local Ray), 'auto', or host:port / ray://host:port. Anything else is most likely a model name
    that argparse gave to --ray (`compare --ray mlp dnn`): say so rather than try to connect to it."""
    if address is None or address == "auto" or ":" in address:
        return
    raise UserError(
        f"--ray takes no address or one like auto, ray://host:10001 or host:6379, not {address!r}; "
        "put --ray after the model names"
    )


def check_reachable(address: str) -> None:
    """A one-line error within REACH_SECONDS when nothing listens at host:port or ray://host:port ('auto' and a
    local Ray are Ray's to find)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(port)
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_SECONDS).close()
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError):
            reason = "not a port"
        elif isinstance(e, TimeoutError):  # what a host that drops packets does
            reason = f"no answer in {REACH_SECONDS} s"
        else:
            reason = (e.strerror or str(e)).lower()
        raise UserError(f"cannot reach Ray at {address}: {reason}") from None


def _init(ray: ModuleType, address: str, options: dict) -> None:
    """ray.init at `address`. Through Ray Client, once more if the cluster failed to start this session's
    server: Ray 2.60's proxy sometimes does on a first connection (seen on a two-node cluster on one machine)."""
    for attempt in range(CLIENT_ATTEMPTS if address.startswith("ray://") else 1):
        try:
            ray.init(address=address, **options)
            return
        except ConnectionError as e:
            if attempt + 1 == CLIENT_ATTEMPTS or "failure from server" not in str(e):
                raise
            err.print(
                f"ray: {address} failed to start a server for this session; trying again", highlight=False
            )
            ray.shutdown()


@contextmanager
def connected(address: str | None) -> Iterator[ModuleType]:
    """Ray, initialised: a local Ray on this machine's CPUs (address None) or the cluster at `address`; shut
    down afterwards if this call started it. An already initialised Ray (a notebook's, a test's) is used as is.
    Meanwhile stdout is stderr: Ray prints its nodes' messages there (a task retried), and stdout is the
    command's (--json)."""
    with contextlib.redirect_stdout(sys.stderr), _connected(address) as ray:
        yield ray


@contextmanager
def _connected(address: str | None) -> Iterator[ModuleType]:
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
        try:
            if address is None:
                ray.init(num_cpus=max(1, math.floor(cpu.available())), include_dashboard=False, **quiet)
            else:  # (a cluster's dashboard is its own: Ray Client refuses to connect when asked about it)
                check_reachable(address)
                _init(ray, address, quiet)
        except UserError:
            raise
        except Exception as e:  # ConnectionError, RuntimeError, ValueError...: Ray's messages run to lines
            reason = first_line(e)
            where = "start a local Ray" if address is None else f"reach Ray at {address}"
            raise UserError(f"cannot {where}: {reason}") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def train_job(data: dict[str, Split], job: Job, threads: int, device: str) -> dict:
    """The Ray task: one run on `threads` intra-op threads; returns its outcome (plain data, no model) and the
    Ray node it ran on."""
    import ray

    train_split, eval_split = job.splits(data)
    result = train(
        job.model, job.recipe, train_split, eval_split, seed=job.seed, device=device, threads=threads
    )
    return {**outcome(result, job.keep_predictions), "ray_node_id": ray.get_runtime_context().get_node_id()}


class RayExecutor:
    """runs.run_jobs's executor for --ray: every job it gets is a Ray task on `threads` CPUs (and a GPU on CUDA);
    the outcomes come back to the driver, which saves them."""

    def __init__(self, address: str | None, device: torch.device, threads: int) -> None:
        check_address(address)
        self.address, self.device, self.threads = address, device, threads

    def run(self, jobs: dict[int, Job], data: dict[str, Split], progress: Progress | None) -> Iterator[tuple]:
        with connected(self.address) as ray:
            cpus = ray.cluster_resources().get("CPU", 0)
            at_once = (
                f"up to {int(cpus // self.threads)} at once on {cpus:g} CPUs, {self.threads} thread(s) each"
            )
            err.print(f"ray: {len(jobs)} run(s) to train, {at_once}", highlight=False)
            gpus = 1 if self.device.type == "cuda" else 0
            task = ray.remote(train_job).options(num_cpus=self.threads, num_gpus=gpus, max_retries=RETRIES)
            shared = ray.put(data)  # once: every task reads the same uint8 tensors from the object store
            running = {task.remote(shared, job, self.threads, str(self.device)): i for i, job in jobs.items()}
            try:
                while running:
                    [ready], _ = ray.wait(list(running), num_returns=1)
                    i = running.pop(ready)
                    fields = _result(ray, ready, jobs[i].label, len(jobs) - len(running) - 1)
                    if (
                        progress is not None
                    ):  # workers report no steps while they train: the run joins at once
                        progress.advance(jobs[i].label, steps_for(jobs[i].sizes(data)[0], jobs[i].recipe))
                    yield i, fields
            finally:  # Ctrl-C or a failed run: the finished runs are saved; the others are not left running
                for ref in running:
                    ray.cancel(ref, force=True)


def _result(ray: ModuleType, ref, label: str, finished: int) -> dict:
    """A task's outcome; a run that failed for a reason the user can fix (diverged) is that one-line error, and so
    is one that Ray lost (its node died more often than RETRIES allows)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):
            raise e.cause from None
        raise
    except ray.exceptions.RayError as e:  # WorkerCrashedError, NodeDiedError, ObjectLostError...
        raise UserError(
            f"run {label} was lost on Ray ({type(e).__name__}: {first_line(e)}); the {finished} run(s) "
            "finished before it are saved: the same command again trains the rest"
        ) from None
