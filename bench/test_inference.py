"""Inference latency: every zoo model x runtime x device x batch x thread count, one call per timed round.

    pytest bench/test_inference.py --benchmark-only                       # all cores
    pytest bench/test_inference.py --benchmark-only --bench-threads 1,2   # each thread count
    pytest bench/test_inference.py --benchmark-only -k "lenet and b1-"    # one model, batch 1
    pytest bench/test_inference.py --benchmark-only --bench-precision fp32,bf16   # and the bf16 rows

Per row (extra_info kind "inference"): p50, p90 and p99 latency of single calls (from pytest-benchmark's raw
samples), the p50's 95% interval (`p50_ci_s`), IQR/median, images/s (batch / p50) and its interval, the
contention it was measured under, and the speed-up over PyTorch eager: measured interleaved with eager at the
same model, device, batch and threads (`speedup_paired`, `speedup_paired_ci`), and, filled in at the end of the
run, against eager's own row at its fastest thread count (`speedup_vs_eager`, `eager_threads`). Each row samples
until its intervals are within bench/timing.py's CI_TARGET or its time cap (--benchmark-max-time; quick: 0.3 s
of timed calls) is spent, and records which (`stopped`). Beside them, what deploying that runtime and model costs (the same in
each of its rows; see bench/coldstart.py): `artifact_bytes`, `cold_start_s` and `peak_rss_mb`. The input is
real test images, normalised and moved to the device before timing; CUDA rows synchronise inside the timed
call. Absent runtimes and devices are skipped with the reason.

Every row says its `precision`: fp32, int8 (with `cpu_int8_units`, the CPU's int8 dot-product or matrix units
that its kernels can use, [] when none), or bf16: with --bench-precision bf16, PyTorch eager under autocast and
OpenVINO with its bf16 hint run as runtimes of their own (eager-bf16, openvino-bf16), their speed-up measured
against fp32 eager; the other runtimes' bf16 rows are skipped with the reason (bench/runtimes.py, NO_BF16).
"""

from __future__ import annotations

from functools import partial

import pytest

from bench import timing
from bench.runtimes import BF16, Unavailable, bf16_unavailable, build, runtime_names, unavailable
from mnist_zoo.cpu import matrix_units
from mnist_zoo.data import normalize
from mnist_zoo.models import list_models, model_info
from mnist_zoo.targets import precision as runtime_precision

BATCHES = (1, 64, 1000)


@pytest.fixture(scope="session")
def predictors():
    """torch.compile predictors, reused across batch sizes so each model compiles once per shape per session.
    (Other runtimes are built per row: an idle ONNX Runtime session keeps threads that could disturb others.)
    """
    return {}


@pytest.mark.parametrize("batch", BATCHES, ids=[f"b{b}" for b in BATCHES])
@pytest.mark.parametrize("runtime", runtime_names())
@pytest.mark.parametrize("model_name", list_models())
def test_latency(
    benchmark,
    new_row,
    bench_options,
    torch_device,
    threads,
    zoo_model,
    exports,
    test_split,
    predictors,
    deployment,
    model_name,
    runtime,
    batch,
    precision,
):
    bf16 = precision == "bf16"
    reason = bf16_unavailable(runtime, torch_device) if bf16 else unavailable(runtime, torch_device)
    if reason:
        pytest.skip(reason)
    if bench_options.quick and runtime == "compile":
        pytest.skip("torch.compile is left out of --bench-quick (compiling takes tens of seconds per shape)")
    model, source = zoo_model(model_name, trained=False)
    key = (model_name, runtime, str(torch_device), threads, precision)
    try:
        predictor = predictors.get(key) or build(
            runtime, model, torch_device, threads, exports, model_name, batch=batch, precision=precision
        )
        if runtime == "compile":
            predictors[key] = predictor
        x = predictor.prepare(normalize(test_split.images[:batch]))
        out = predictor.to_logits(predictor.run(x))  # first call: compiles (torch.compile), checks the shape
        # before timing: it starts processes. Of the fp32 runtime's artifact and start-up: not a bf16 row's
        costs = {} if bf16 else deployment(runtime, model, model_name)
    except Unavailable as e:
        pytest.skip(str(e))
    assert out.shape == (batch, 10)
    benchmark.group = f"inference: {model_name}, batch {batch}, {torch_device.type}"
    cap_s, min_rounds = bench_options.budget_s, max(timing.MIN_ROUNDS, bench_options.min_rounds)
    reference = None
    if (
        runtime != "eager" or bf16
    ):  # interleaved with fp32 eager, so that the speed-up compares like with like
        eager = build("eager", model, torch_device, threads, exports, model_name)
        eager_x = eager.prepare(normalize(test_split.images[:batch]))
        reference = partial(eager.run, eager_x)
    options = dict(batch=batch, cap_s=cap_s, min_rounds=min_rounds, reference=reference)
    options["settle_s"] = timing.SETTLE_S if threads > 1 and reference else 0.0  # pools that spin: timing.py
    stats = timing.measure(benchmark, lambda: predictor.run(x), **options)
    how = {"precision": "bf16" if bf16 else runtime_precision(runtime)}
    if how["precision"] == "int8":  # whether the CPU has units for int8 products (VNNI, AMX) at all
        how["cpu_int8_units"] = matrix_units("int8") if torch_device.type == "cpu" else None
    new_row(
        "inference",
        model=model_name,
        runtime=BF16[runtime] if bf16 else runtime,
        **how,
        device=str(torch_device),
        batch=batch,
        threads=threads,
        macs=model_info(model_name).macs,
        weights=source,
        runtime_info=predictor.info,
        **stats,
        **costs,
    )
