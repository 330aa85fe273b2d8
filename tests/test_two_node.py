"""Beyond one machine, on one machine: a real two-node Ray cluster (tests/cluster_fixtures.py: a head and a
worker started with `ray start`, 1 CPU each, every address 127.0.0.1) and two torchrun agents joined by a c10d
rendezvous. `cv --ray ADDRESS`, `sweep --ray ADDRESS` and Ray Client (ray://) run against the cluster from a
separate driver process, as a user's would; the runs land on both nodes (each record names its Ray node) and
give the sequential run's results. Killing the worker node mid-run loses no finished run. Nothing is left
running afterwards (the fixture's teardown checks). Marked `cluster` (pytest -m cluster runs exactly these);
they need the ray extra and take about two minutes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from cluster_fixtures import HOST, TwoNodeRay, free_port
from test_cluster import QUICK, _runs

pytest.importorskip("ray", reason="needs the ray extra: pip install 'mnist-zoo[ray]' (tox -e ray)")
pytestmark = pytest.mark.cluster
DRIVER_SECONDS = (
    600  # a generous bound on one driver (2 cores shared with other work): a hang fails, not waits
)
CV = ["cv", "mlp", "--folds", "2", *QUICK]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    with TwoNodeRay(tmp_path_factory.mktemp("two-nodes")) as cluster:
        yield cluster
    assert not cluster.leftovers(), "processes of the cluster still running after it was stopped"


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """`cv mlp --folds 2` trained here, without Ray: what the cluster must reproduce."""
    out = tmp_path_factory.mktemp("sequential")
    argv = [sys.executable, "-m", "mnist_zoo", *CV, "--report-dir", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=DRIVER_SECONDS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _driver(cluster: TwoNodeRay, *argv: str, code: str = "") -> subprocess.Popen:
    """`python -m mnist_zoo ARGV` (or `python -c CODE ARGV`) with the cluster's token in its environment."""
    command = [sys.executable, *(["-c", code] if code else ["-m", "mnist_zoo"]), *argv]
    return subprocess.Popen(
        command, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run(cluster: TwoNodeRay, *argv: str, code: str = "") -> tuple[int, dict | None, str]:
    proc = _driver(cluster, *argv, code=code)
    out, err = proc.communicate(timeout=DRIVER_SECONDS)
    return proc.returncode, json.loads(out) if proc.returncode == 0 else None, err


@pytest.mark.parametrize("via", ["address", "client"])
def test_cv_runs_on_both_nodes_with_the_sequential_results(two_nodes, sequential, via, tmp_path):
    address = two_nodes.address if via == "address" else two_nodes.client_address
    code, out, err = _run(two_nodes, *CV, "--report-dir", str(tmp_path), f"--ray={address}")
    assert code == 0, err[-3000:]
    assert out["complete"] and out["accuracy"] == sequential["accuracy"]
    assert _runs(out, "fold_results") == _runs(sequential, "fold_results")
    # 2 runs of 1 CPU each on 2 nodes of 1 CPU: one on each, as the nodes' ids in the runs' records say
    assert sorted(_nodes(out["fold_results"])) == sorted(two_nodes.node_ids.values())


def test_a_sweep_runs_on_both_nodes(two_nodes, tmp_path):
    argv = [
        "sweep",
        "mlp",
        "--grid",
        "lr=0.05,1e-5",
        "--epochs",
        "1",
        "--train-size",
        "600",
        "--threads",
        "1",
    ]
    argv += ["--scheduler", "fifo", "--json", "--report-dir", str(tmp_path), f"--ray={two_nodes.address}"]
    code, out, err = _run(two_nodes, *argv)
    assert code == 0, err[-3000:]
    assert out["cpus"] == 2 and len(out["trials"]) == 2 and all(t["finished"] for t in out["trials"])
    # 2 trials of 1 CPU each on 2 nodes of 1 CPU: one on each
    assert sorted(t["ray_node_id"] for t in out["trials"]) == sorted(two_nodes.node_ids.values())
    best, worst = out["configurations"]
    assert best["grid"] == {"lr": 0.05} and best["accuracy"]["mean"] > worst["accuracy"]["mean"]


def _nodes(results: list[dict]) -> list[str]:
    """The Ray node that trained each run, from the run's record (the runs store's file)."""
    return [json.loads(Path(r["run_file"]).read_text())["ray_node_id"] for r in results]


def _worker_is_training(cluster: TwoNodeRay) -> bool:
    """Whether a process of the worker node is running a task now (Ray names it after the task)."""
    try:
        node = psutil.Process(cluster.nodes["worker"].pid).children(recursive=True)
        return any("ray::train_job" in " ".join([p.name(), *p.cmdline()]) for p in node)
    except psutil.Error:
        return False


@pytest.mark.parametrize("retries", [0, 2])
def test_the_worker_node_lost_mid_run_loses_no_finished_run(retries, tmp_path):
    """The worker node killed while it trains a run, after one run is saved: with Ray's retries (the default) the
    run is trained again on the head and cv finishes; with none, the driver names the lost run in one line.
    Either way the runs saved before are kept, and the same command again finishes on the head alone."""
    argv = ["cv", "mlp", "--folds", "4", "--epochs", "2", "--train-size", "12000", "--no-progress"]
    argv += ["--threads", "1", "--no-plots", "--json", "--report-dir", str(tmp_path)]
    runs = tmp_path / "runs"
    with TwoNodeRay(tmp_path) as cluster:
        # RETRIES is the driver's: it sets each task's max_retries
        code = "import sys; from mnist_zoo import cli, cluster; "
        code += f"cluster.RETRIES = {retries}; sys.exit(cli.main())"
        driver = _driver(cluster, *argv, f"--ray={cluster.address}", code=code)
        deadline = time.monotonic() + DRIVER_SECONDS
        while not (runs.is_dir() and any(runs.glob("*.json")) and _worker_is_training(cluster)):
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        saved = {p.name: p.read_bytes() for p in runs.glob("*.json")}  # (not the temporary files of writes)
        cluster.kill_worker()
        out, err = driver.communicate(timeout=DRIVER_SECONDS)
        if retries:
            assert driver.returncode == 0, err[-3000:]
            assert json.loads(out)["complete"]
        else:
            assert driver.returncode == 1 and "Traceback" not in err, err[-3000:]
            last = err.strip().splitlines()[-1]
            assert last.startswith("error: run cv4-fold") and "was lost on Ray" in last, last
        assert all((runs / name).read_bytes() == data for name, data in saved.items())  # kept as they were
        code, again, err = _run(cluster, *argv, f"--ray={cluster.address}")
        assert code == 0, err[-3000:]
        assert again["complete"] and sum(r["reused"] for r in again["fold_results"]) >= len(saved)
        trained = [r for r in again["fold_results"] if not r["reused"]]
        assert len(trained) >= (0 if retries else 1)  # at least the lost run
        assert set(_nodes(trained)) <= {cluster.node_ids["head"]}  # the worker is gone
    assert not cluster.leftovers()


def test_an_address_where_no_ray_listens_is_one_line_within_30_seconds(tmp_path):
    with socket.socket() as s:  # a port that is bound but not listening: connections are refused
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        for address in (f"{HOST}:{port}", f"ray://{HOST}:{port}"):
            start = time.monotonic()
            argv = [sys.executable, "-m", "mnist_zoo", *CV, "--report-dir", str(tmp_path), f"--ray={address}"]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert time.monotonic() - start < 30
            assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
            assert proc.stderr.startswith(f"error: cannot reach Ray at {address}: "), proc.stderr


def _agent(rendezvous: int, checkpoint: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    command += [
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"{HOST}:{rendezvous}",
        "--rdzv-id",
        "two-agents",
    ]
    command += ["-m", "mnist_zoo", "train", "lenet", "--epochs", "1", "--threads", "1", "--json"]
    command += ["--no-progress", "--checkpoint", str(checkpoint)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_torchrun_agents_train_one_model(tmp_path):
    """Two torchrun agents, as on two machines (one process each), meet at a c10d rendezvous on 127.0.0.1."""
    port = free_port()
    agents = [_agent(port, tmp_path / "lenet.pt") for _ in range(2)]
    try:
        outputs = [a.communicate(timeout=DRIVER_SECONDS) for a in agents]
    finally:
        for a in agents:
            a.kill()
    for a, (_, err) in zip(agents, outputs, strict=True):
        assert a.returncode == 0, err[-3000:]
    [line] = [x for out, _ in outputs for x in out.splitlines() if x.startswith("{")]  # rank 0 alone prints
    record = json.loads(line)
    assert record["world_size"] == 2 and record["backend"] == "gloo" and record["saved"]
    assert sorted(n["node_rank"] for n in record["nodes"]) == [0, 1]
    assert sorted(r for n in record["nodes"] for r in n["ranks"]) == [0, 1]
    assert record["images_per_rank"] == 30_000 and (tmp_path / "lenet.pt").is_file()
    assert record["test_accuracy"] > 0.9
