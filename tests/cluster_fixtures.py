"""A real two-node Ray cluster on this machine (a head and a worker, each its own raylet and 1 CPU, started with
`ray start` as on two machines), for the tests marked `cluster` (tests/test_two_node.py). It is also the
recipe docs/scaling.md gives for real machines: one token shared by every node and driver, `ray start --head`
on one, `ray start --address HEAD:PORT` on the others (docs/scaling.md, "On a cluster").

    with TwoNodeRay(Path(tmp)) as cluster:
        subprocess.run([..., "--ray", cluster.address], env=cluster.env)  # or cluster.client_address (ray://)
        cluster.kill_worker()                                              # the worker machine lost

Every address given is 127.0.0.1 (Ray on Linux advertises the machine's own address for it: a loopback address
cannot reach other machines, so Ray never registers one). Each node has a short temp dir of its own (Ray's
unix sockets live there, and their paths may not pass 107 bytes). Since Ray 2.59 a cluster started by `ray
start` turns on token authentication whenever a token exists (and every cluster from 2.61), so the token is
explicit: a file of our own named by RAY_AUTH_TOKEN_PATH, never ~/.ray/auth_token, in the environment of both
nodes and of every driver. Stopping sends SIGTERM to each `ray start --block` (it stops its node's processes
and reaps them), then SIGKILL to whatever of that node is left; `leftovers()` finds any process of this
cluster still running, by a variable only its processes carry.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_SECONDS = 180  # a node's start on a busy 2-core machine (about 5 s when idle)
STOP_SECONDS = 30
MARKER = "MNIST_ZOO_TEST_CLUSTER"  # in the environment of every process of one cluster (inherited by Ray's)
PR_SET_CHILD_SUBREAPER = 36


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux), so that Ray's processes whose parent
    died are reaped here rather than left as zombies where PID 1 reaps nothing (as in some containers)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class TwoNodeRay:
    """A head and a worker on 127.0.0.1, 1 CPU each; a context manager that stops both, even on failure."""

    def __init__(self, directory: Path | None = None) -> None:
        # Short: Ray puts unix sockets under <temp dir>/session_<date>_<pid>/sockets/.
        self.root = Path(tempfile.mkdtemp(prefix="rz-", dir="/tmp"))
        self.logs = directory or self.root
        token = self.root / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.port, self.client_port = free_port(), free_port()
        self.address, self.client_address = f"{HOST}:{self.port}", f"ray://{HOST}:{self.client_port}"
        # The environment of the nodes and of every driver: the token, and this checkout importable by Ray's
        # workers (what `pip install mnist-zoo[ray]` on every machine gives a user).
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.env.update(PYTHONPATH=path, RAY_USAGE_STATS_ENABLED="0", **{MARKER: str(self.root)})
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, str] = {}  # "head"/"worker" -> Ray node id (hex)
        self.pids: set[int] = set()  # this cluster's processes seen when stopping a node: reaped if orphaned

    def __enter__(self) -> TwoNodeRay:
        _adopt_orphans()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _ray_start(self, name: str, *args: str) -> None:
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port"]
        ports += ["--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port"]
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args]
        command += ["--node-ip-address", HOST, "--num-cpus", "1", "--temp-dir", str(self.root / name)]
        command += ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
        for option in ports:  # fixed free ports: two nodes on one machine must not both take Ray's defaults
            command += [option, str(free_port())]
        log = (self.logs / f"ray-{name}.log").open("w")
        proc = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.nodes[name] = proc
        deadline = time.monotonic() + START_SECONDS
        while "Ray runtime started" not in self.log(name):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed; its log ends:\n{self.log(name)[-3000:]}")
            time.sleep(0.5)

    def log(self, name: str) -> str:
        return (self.logs / f"ray-{name}.log").read_text(errors="replace")

    def start(self) -> None:
        head = ["--head", "--port", str(self.port), "--ray-client-server-port", str(self.client_port)]
        self._ray_start("head", *head, "--include-dashboard", "false")
        self._ray_start("worker", "--address", self.address)
        self.node_ids = self.wait_for_nodes(2)

    def wait_for_nodes(self, alive: int) -> dict[str, str]:
        """The node ids once `alive` nodes are alive, asked of the cluster by a driver (as a user's would)."""
        code = (
            "import json, sys, time, ray\n"
            "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='WARNING')\n"
            "for _ in range(600):\n"
            "    nodes = [n for n in ray.nodes() if n['Alive']]\n"
            "    if len(nodes) == int(sys.argv[2]): break\n"
            "    time.sleep(0.5)\n"
            "role = lambda n: 'head' if 'node:__internal_head__' in n['Resources'] else 'worker'\n"
            "ids = {role(n): n['NodeID'] for n in nodes}\n"
            "print(json.dumps(ids))\n"
        )
        command = [sys.executable, "-c", code, self.address, str(alive)]
        proc = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=START_SECONDS)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ids = json.loads(proc.stdout.strip().splitlines()[-1])
        assert len(ids) == alive, ids
        return ids

    def kill_worker(self) -> None:
        """The worker machine lost: every process of the worker node killed at once, no goodbye."""
        proc = self.nodes.pop("worker")
        self.pids.update(p.pid for p in self.leftovers())
        _kill_group(proc, signal.SIGKILL)
        proc.wait(STOP_SECONDS)

    def stop(self) -> None:
        """Stop the worker, then the head (SIGTERM to `ray start --block`: it stops and reaps its node); then
        SIGKILL to any process of this cluster left, and remove its temp dirs."""
        self.pids.update(p.pid for p in self.leftovers())
        for name in ("worker", "head"):
            proc = self.nodes.pop(name, None)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait(STOP_SECONDS)
        for p in self.leftovers():
            with _gone():
                p.kill()
        self.reap()
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[psutil.Process]:
        """This cluster's processes still running (zombies are not running)."""
        found = []
        for p in psutil.process_iter():
            with _gone():
                if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(MARKER) == str(self.root):
                    found.append(p)
        return found

    def reap(self) -> None:
        """Reap this cluster's orphans that were handed to this process (see _adopt_orphans): only those, so
        that no other child's exit status is taken from its owner."""
        for p in psutil.Process().children():
            with _gone():
                if p.pid in self.pids and p.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(p.pid, os.WNOHANG)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    with _gone():
        os.killpg(proc.pid, sig)


class _gone:
    """Ignore a process that ended meanwhile, or one that is not ours to look at."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, (psutil.Error, ProcessLookupError, ChildProcessError))
