"""torchrun: `train` data-parallel on 2 CPU processes (gloo). The fast test trains mlp for one epoch and checks
that each rank took half of every batch and that the result matches one process's; the slow one trains lenet
to its floor. Needs no extra: torch.distributed is part of torch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from mnist_zoo.cli import main
from mnist_zoo.distributed import launched


def _torchrun(tmp_path, *args: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += ["-m", "mnist_zoo", "train", *args, "--threads", "1", "--json", "--no-progress"]
    command += ["--checkpoint", str(tmp_path / "ddp.pt")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("{")]  # rank 0 alone prints
    return json.loads(line)


def test_two_processes_train_shards_of_the_same_batches(tmp_path, capsys):
    record = _torchrun(tmp_path, "mlp", "--epochs", "1")
    assert record["world_size"] == 2 and record["backend"] == "gloo" and record["saved"]
    assert record["images_per_rank"] == 30_000 and record["history"][-1]["images"] == 60_000
    assert (tmp_path / "ddp.pt").is_file()
    argv = ["train", "mlp", "--epochs", "1", "--threads", "1", "--json", "--no-progress"]
    assert main([*argv, "--checkpoint", str(tmp_path / "one.pt")]) == 0
    one = json.loads(capsys.readouterr().out)
    # The same recipe on the same batches: the same model up to float rounding (gradients summed in another order).
    assert record["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=0.002)
    assert record["history"][-1]["train_loss"] == pytest.approx(one["history"][-1]["train_loss"], rel=0.01)
    assert not launched()  # plain processes are not ranks


@pytest.mark.slow
def test_lenet_on_two_processes_reaches_its_floor(tmp_path):
    record = _torchrun(tmp_path, "lenet", "--epochs", "2")
    assert record["test_accuracy"] >= 0.985, record["test_accuracy"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "mlp"], "evaluate does not run under torchrun, only `train MODEL` does"),
        (["train", "mlp", "--streams", "2"], "under torchrun, run `train MODEL` without --streams"),
    ],
)
def test_torchrun_misuse_is_said_once(tmp_path, argv, message):
    """Rank 0 alone says what is wrong; torchrun's own failure report follows (it is torchrun's), and its
    Root Cause shows that line, from the error file each rank writes, not "To enable traceback see ..."."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run([*command, "-m", "mnist_zoo", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    root_cause = proc.stderr.split("Root Cause (first observed failure):")[1]
    assert f"traceback : {errors[0].removeprefix('error: ')}" in root_cause, root_cause
    assert "To enable traceback" not in proc.stderr and "<N/A>" not in proc.stderr, proc.stderr[-3000:]


def test_the_error_file_is_what_torchrun_reads(tmp_path, monkeypatch):
    """The error guard writes TORCHELASTIC_ERROR_FILE in the format torchrun's agent reads (its own parser here)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from mnist_zoo.util import UserError, guarded

    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))

    def refused() -> int:
        raise UserError("no such model 'x'")

    assert guarded(refused, quiet=True) == 1
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(path))
    report = ChildFailedError("mnist_zoo", {0: failure}).format_msg()
    assert "traceback : no such model 'x'" in report and "To enable traceback" not in report, report
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
    path.unlink()
    assert guarded(refused, quiet=True) == 1 and not path.exists()  # without torchrun, no file


def test_ctrl_c_under_torchrun_is_said_once(tmp_path):
    """Ctrl-C in a terminal reaches torchrun and every rank: one `error: interrupted`, not one per rank."""
    psutil = pytest.importorskip("psutil")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    command += ["mnist_zoo", "train", "mlp", "--epochs", "5", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(
        [*command, "--checkpoint", str(tmp_path / "ddp.pt")], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while len(psutil.Process(proc.pid).children()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "torchrun started no ranks"
        time.sleep(0.2)
    time.sleep(10)  # the ranks are past their imports, training
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children()]:
        p.send_signal(signal.SIGINT)  # what a terminal sends to its foreground processes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "ddp.pt").exists()
    assert [line for line in err.splitlines() if line.startswith("error:")] == ["error: interrupted"], err[
        -3000:
    ]
