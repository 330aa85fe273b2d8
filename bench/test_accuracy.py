"""Accuracy benchmarks: every trained model in every runtime on the 10,000 real test images, against PyTorch.

    pytest bench/test_accuracy.py --benchmark-only
    pytest bench/test_accuracy.py --benchmark-only --bench-precision fp32,bf16   # and the bf16 runtimes' rows

Per row (extra_info kind "accuracy"): test accuracy, agreement with PyTorch eager (share of identical
predicted digits), the largest logit difference, and the seconds to run the test set at batch 1000 (the
benchmark's time).
A row fails when its accuracy is under the model's floor or when an export stops agreeing with PyTorch (its
share of identical predictions, and for fp32 its largest logit difference); the floors are the BENCH_* ones in
mnist_zoo/targets.py. With --bench-precision bf16, PyTorch eager under autocast and OpenVINO with its bf16 hint
(eager-bf16, openvino-bf16) get rows of their own, held to the bf16 agreement floor against fp32 eager; the other
runtimes' bf16 rows are skipped with the reason (bench/runtimes.py, NO_BF16).
"""

from __future__ import annotations

import pytest
import torch

from bench.runtimes import BF16, Unavailable, bf16_unavailable, build, runtime_names, unavailable
from mnist_zoo.cpu import Contention
from mnist_zoo.data import normalize
from mnist_zoo.models import list_models
from mnist_zoo.targets import BENCH_AGREEMENT_FLOOR, BENCH_LOGIT_ATOL, accuracy_floor
from mnist_zoo.targets import precision as runtime_precision

EVAL_BATCH = 1000
ROUNDS = 2  # passes over the test set timed per row (quick: 1)


def _batches(predictor, test_split) -> list:
    # Moved to the runtime's side once, before timing (a GPU row does not time host-to-device copies).
    images = test_split.images
    return [
        predictor.prepare(normalize(images[i : i + EVAL_BATCH])) for i in range(0, len(images), EVAL_BATCH)
    ]


@pytest.fixture(scope="session")
def reference_logits(zoo_model, exports, test_split, bench_options):
    """(model name, device) -> PyTorch eager logits on the test set: what every runtime must agree with."""
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def get(name: str, device: torch.device) -> torch.Tensor:
        key = (name, str(device))
        if key not in cache:
            p = build("eager", zoo_model(name)[0], device, max(bench_options.threads), exports, name)
            cache[key] = torch.cat([p.to_logits(p.run(b)) for b in _batches(p, test_split)])
        return cache[key]

    return get


@pytest.mark.parametrize("runtime", runtime_names())
@pytest.mark.parametrize("model_name", list_models())
def test_accuracy(
    benchmark,
    new_row,
    bench_options,
    torch_device,
    zoo_model,
    exports,
    test_split,
    reference_logits,
    deployment,
    model_name,
    runtime,
    precision,
):
    bf16 = precision == "bf16"
    reason = bf16_unavailable(runtime, torch_device) if bf16 else unavailable(runtime, torch_device)
    if reason:
        pytest.skip(reason)
    if bench_options.quick and runtime == "compile":
        pytest.skip("torch.compile is left out of --bench-quick (compiling takes tens of seconds per shape)")
    threads = max(bench_options.threads)
    model, source = zoo_model(model_name)
    try:
        predictor = build(
            runtime, model, torch_device, threads, exports, model_name, batch=EVAL_BATCH, precision=precision
        )
        batches = _batches(predictor, test_split)
        predictor.run(batches[0])  # warm-up; torch.compile compiles here and may turn out unavailable
        # Of the fp32 runtime's artifact and start-up: not a bf16 row's (as in test_inference.py)
        costs = {} if bf16 else deployment(runtime, model, model_name)
    except Unavailable as e:
        pytest.skip(str(e))
    benchmark.group = f"accuracy: seconds to run the {len(test_split):,} test images at batch {EVAL_BATCH}"
    rounds = 1 if bench_options.quick else ROUNDS
    with Contention() as contention:
        outputs = benchmark.pedantic(lambda: [predictor.run(b) for b in batches], rounds=rounds)
    logits = torch.cat([predictor.to_logits(o) for o in outputs])
    reference = reference_logits(model_name, torch_device)
    labels = test_split.labels
    predictions = logits.argmax(1)
    accuracy = (predictions == labels).float().mean().item()
    agreement = (predictions == reference.argmax(1)).float().mean().item()
    max_diff = (logits - reference).abs().max().item()
    name = BF16[runtime] if bf16 else runtime  # the row's runtime: eager-bf16, openvino-bf16
    floor = accuracy_floor(model_name, name)
    agreement_floor = BENCH_AGREEMENT_FLOOR[runtime_precision(name)]
    new_row(
        "accuracy",
        model=model_name,
        runtime=name,
        precision=runtime_precision(name),
        device=str(torch_device),
        threads=threads,
        batch=EVAL_BATCH,
        images=len(labels),
        accuracy=accuracy,
        floor=floor,
        agreement=agreement,
        agreement_floor=agreement_floor,
        max_abs_logit_diff=max_diff,
        images_per_second=len(labels) / benchmark.stats.stats.median,
        weights=source,
        runtime_info=predictor.info,
        **contention.record(),
        **costs,
    )
    assert logits.shape == (len(labels), 10)
    assert accuracy >= floor, (
        f"{model_name} in {name}: test accuracy {accuracy:.2%} is under its floor {floor:.2%}"
    )
    assert agreement >= agreement_floor, (
        f"{model_name} in {name} predicts a different digit than PyTorch for {1 - agreement:.2%} of the "
        "test set"
    )
    if runtime_precision(name) == "fp32":
        atol = BENCH_LOGIT_ATOL[torch_device.type]
        assert max_diff <= atol, f"{model_name} in {name}: logits differ from PyTorch by up to {max_diff:.2g}"
