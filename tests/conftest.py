"""Unit-test fixtures (the data fixtures are in the repository's conftest.py). Tests never touch the user's
checkpoints: MNIST_ZOO_CHECKPOINTS points at a temporary directory for each test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mnist_zoo import data
from mnist_zoo.checkpoint import checkpoint_dir, save_checkpoint
from mnist_zoo.recipes import recipe_for
from mnist_zoo.train import train


@pytest.fixture(autouse=True)
def _isolated_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "checkpoints"
    monkeypatch.setenv("MNIST_ZOO_CHECKPOINTS", str(directory))
    return directory


@pytest.fixture(scope="session")
def small_trained(train_split, test_split, tmp_path_factory):
    """factory(name) -> (model, meta, checkpoint path): trained for 1 epoch on 12,000 images (seconds, not a
    benchmark), cached for the session. Accurate enough (> 85%) that export parity is checked on real logits."""
    cache: dict[str, tuple] = {}
    directory = tmp_path_factory.mktemp("small-checkpoints")

    def make(name: str):
        if name not in cache:
            subset = train_split.subset(torch.arange(12_000))
            # one epoch of 47 steps is too short a warm-up for lenet's peak lr 0.15: 0.05 trains smoothly
            recipe = recipe_for(name, epochs=1, lr=0.05 if name == "lenet" else None)
            result = train(name, recipe, subset, test_split, seed=0)
            meta = {"model": name, "recipe": "default", "epochs": 1, "seed": 0,
                    "test_accuracy": result.final.accuracy, "data_sha256": data.DATA_SHA256,
                    "torch_version": str(torch.__version__)}  # fmt: skip
            path = save_checkpoint(result.model, meta, directory / f"{name}.pt")
            cache[name] = (result.model, meta, path)
        return cache[name]

    return make


@pytest.fixture(scope="module")
def ray_2_cpus():
    """A local Ray of 2 CPUs for one test module, whatever the machine has (--ray and sweep use a Ray that is
    already running as it is); skipped with the reason without the ray extra."""
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'mnist-zoo[ray]' (tox -e ray)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


CLUSTER_NOT_RUN = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The cluster tests (a two-node Ray cluster and two torchrun agents: minutes) run when asked for, by
    `-m cluster` or by naming tests/test_two_node.py (tox -e ray, CI's own step); plain `pytest` deselects them
    and its summary says so."""
    if "cluster" in (config.option.markexpr or "") or any("test_two_node" in a for a in config.args):
        return
    dropped = [i for i in items if i.get_closest_marker("cluster")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if not i.get_closest_marker("cluster")]
        config.stash[CLUSTER_NOT_RUN] = len(dropped)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if config.stash.get(CLUSTER_NOT_RUN, 0):
        n = config.stash[CLUSTER_NOT_RUN]
        terminalreporter.write_line(f"{n} cluster tests not run: pytest -m cluster runs them (tox -e ray)")


@pytest.fixture
def lenet_checkpoint(small_trained) -> Path:
    """The small trained lenet as the zoo's checkpoint (MNIST_ZOO_CHECKPOINTS is a per-test directory)."""
    target = checkpoint_dir() / "lenet.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(small_trained("lenet")[2], target)
    return target
