"""Training scaling: lenet images/s on 1 and 2 data-parallel processes (torchrun), and the one-process
slice-parallel path beside them.

    pytest bench/test_scaling.py --benchmark-only          # about a minute on 2 cores; left out of --bench-quick

Rows (extra_info kind "scaling"), each one epoch of lenet's default recipe on the 60,000 training images in a
fresh process (`python -m mnist_zoo train ... --json`; images/s counts training only):
  ddp     torchrun --nproc-per-node P, one thread per process on a CPU, one GPU per process on CUDA;
          scaling efficiency = images/s at P / (P x images/s at 1 process), from the same run
  slices  one process, 2 threads, each batch cut into 2 slices trained at once (train.SliceGradient): the
          home-made route to 2 cores that DDP on 2 processes competes with (its efficiency is against ddp x1)
CUDA rows are skipped, with the reason, without enough GPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mnist_zoo.cpu import Contention

MODEL = "lenet"
ONE_PROCESS: dict[str, float] = {}  # device -> ddp images/s at 1 process, for the efficiency of later rows


def _train(launch: list[str], options: list[str], tmp_path) -> dict:
    """One epoch of MODEL in a fresh process (or processes, under torchrun); its training record."""
    command = [
        sys.executable,
        *launch,
        "mnist_zoo",
        "train",
        MODEL,
        "--epochs",
        "1",
        "--json",
        "--no-progress",
    ]
    command += ["--replace", "--checkpoint", str(tmp_path / f"{MODEL}.pt"), *options]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("engine", "processes"), [("ddp", 1), ("ddp", 2), ("slices", 1)])
def test_scaling(benchmark, new_row, bench_options, device, engine, processes, tmp_path):
    if bench_options.quick:
        pytest.skip("--bench-quick leaves the scaling rows out (each is a fresh training process)")
    if device == "cuda" and torch.cuda.device_count() < processes:
        pytest.skip(f"needs {processes} CUDA device(s), torch sees {torch.cuda.device_count()}")
    if device == "cuda" and engine == "slices":
        pytest.skip("slices are the CPU's route to several cores; a GPU trains one stream")
    benchmark.group = f"training scaling: {MODEL}, one epoch"
    threads = 2 if engine == "slices" else 1
    if engine == "ddp":
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m"]
    else:
        launch = ["-m"]
    options = ["--device", device, "--threads", str(threads)]
    with Contention() as contention:  # the ranks are children of this process: their time is ours
        record = benchmark.pedantic(_train, args=(launch, options, tmp_path), rounds=1)
    ips = record["images_per_second"]
    if engine == "ddp" and processes == 1:
        ONE_PROCESS[device] = ips
    one = ONE_PROCESS.get(device)
    workers = processes if engine == "ddp" else threads
    new_row(
        "scaling",
        model=MODEL,
        device=device,
        engine=engine,
        processes=processes,
        threads=threads,
        images_per_second=ips,
        scaling_efficiency=ips / (workers * one) if one else None,
        test_accuracy=record["test_accuracy"],
        world_size=record.get("world_size", 1),
        backend=record.get("backend"),
        **contention.record(),
    )
