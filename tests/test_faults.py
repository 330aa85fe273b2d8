"""Faults of the place rather than of the input: two trainings saving into one checkpoint at once, and a full
disk (a small tmpfs: needs root, skipped with the reason otherwise) under train --replace and evaluate --seeds.
Each must end in one line and a documented exit code, and lose nothing that was there before."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mnist_zoo.cli import main
from mnist_zoo.util import EXIT_IO, UserError

ROOT = Path(__file__).resolve().parents[1]

# One process of the race: it saves a model of the given accuracy with fit.keep_if_better, but the read of the
# checkpoint's accuracy is made to wait until the other process has read it too (at most WAIT s), and the less
# accurate run then waits longer before writing. Without a lock around read-compare-write both read "no
# checkpoint" and the less accurate run is saved last; with it, the second waits for the first, sees its
# checkpoint and decides on what is there.
_SAVER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from mnist_zoo import fit
    from mnist_zoo.models import get_model

    target, accuracy, me, other = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    read = fit.accuracy_of
    WAIT = 3.0

    def slow_read(path, model):
        previous = read(path, model)
        (target.parent / f"read-{me}").touch()
        until = time.monotonic() + WAIT
        while not (target.parent / f"read-{other}").exists() and time.monotonic() < until:
            time.sleep(0.02)
        time.sleep(1.0 if me == "worse" else 0.0)
        return previous

    fit.accuracy_of = slow_read
    record = {"model": "mlp", "test_accuracy": accuracy}
    done = fit.keep_if_better(get_model("mlp"), record, target, overwrite=False)
    print(json.dumps({k: done[k] for k in ("saved", "checkpoint_action", "previous_accuracy")}))
    """
)


def test_two_trainings_at_once_leave_the_more_accurate_checkpoint(tmp_path):
    from mnist_zoo.checkpoint import read_checkpoint

    target = tmp_path / "mlp.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {"better": ("0.95", "worse"), "worse": ("0.90", "better")}
    procs = {
        me: subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(target), acc, me, other],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, (acc, other) in runs.items()
    }
    records = {}
    for me, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        records[me] = json.loads(out)
    assert read_checkpoint(target)["meta"]["test_accuracy"] == 0.95
    better, worse = records["better"], records["worse"]
    assert better["saved"] is True
    if worse["saved"]:  # the worse saved first, then was replaced
        assert worse["checkpoint_action"] == "created" and better["checkpoint_action"] == "replaced"
        assert better["previous_accuracy"] == 0.90
    else:  # the better saved first; the worse saw it and kept it
        assert worse["checkpoint_action"] == "kept" and worse["previous_accuracy"] == 0.95
        assert better["checkpoint_action"] == "created"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs, which only root can mount")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _fill(disk: Path) -> None:
    """Fill `disk` up to its last byte."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_a_full_disk_under_train_replace_keeps_the_old_checkpoint(small_disk, small_trained, capsys):
    _, _, path = small_trained("mlp")
    target = small_disk / "mlp.pt"
    target.write_bytes(path.read_bytes())
    before = target.read_bytes()
    _fill(small_disk)
    argv = ["train", "mlp", "--epochs", "1", "--batch-size", "1000", "--threads", "1", "--no-progress"]
    assert main([*argv, "--replace", "--checkpoint", str(target)]) == EXIT_IO == 74
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {target}: No space left on device") and err.count("\n") == 1
    assert target.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == [".mlp.pt.lock", "filler", "mlp.pt"]


def test_a_full_disk_under_evaluate_seeds_is_one_line(small_disk, capsys):
    reports = small_disk / "reports"
    reports.mkdir()
    _fill(small_disk)
    argv = ["evaluate", "mlp", "--seeds", "2", "--epochs", "1", "--train-size", "500", "--no-progress"]
    code = main([*argv, "--threads", "1", "--no-plots", "--report-dir", str(reports)])
    err = capsys.readouterr().err
    assert code == 74 and err.startswith("error: cannot write ") and err.count("\n") == 1, err
    assert "No space left on device" in err
    assert [p.relative_to(reports) for p in reports.rglob("*") if p.is_file()] == []  # no partial file


def test_ray_with_nothing_listening_is_one_line_at_once(tmp_path, capsys):
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'mnist-zoo[ray]' (tox -e ray)")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        argv = ["evaluate", "mlp", "--seeds", "1", "--epochs", "1", "--train-size", "100", "--no-progress"]
        start = time.monotonic()
        assert main([*argv, "--report-dir", str(tmp_path), "--ray", address]) == 1
        err = capsys.readouterr().err
        assert err == f"error: cannot reach Ray at {address}: connection refused\n"
        assert time.monotonic() - start < 30  # Ray itself retried for minutes


def test_a_ray_address_that_does_not_answer_is_one_line(monkeypatch):
    from mnist_zoo import cluster

    def silent(address, timeout):  # what a host that drops packets does, without waiting for it
        assert timeout == cluster.REACH_SECONDS
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(UserError, match=r"^cannot reach Ray at ray://head:10001: no answer in 5 s$"):
        cluster.check_reachable("ray://head:10001")
    cluster.check_reachable("auto")  # Ray finds it: not probed
    for address in ("head:port", "head:99999"):
        with pytest.raises(UserError, match="not a port"):
            cluster.check_reachable(address)
