"""Training benchmarks: time per epoch, time to target accuracy, and the tutorial pipeline timed beside them.

    pytest bench/test_training.py --benchmark-only            # a couple of minutes on 2 cores

Rows (extra_info kind), each in every precision of --bench-precision (default fp32; the row's precision and
precision_reason say what ran and why):
  epoch             one epoch of the default recipe on the 60,000 training images: seconds and images/s, with
                    a 95% interval of images/s (bootstrap over 1/20-epoch segments); up to EPOCH_ROUNDS
                    epochs, fewer once that interval is within timing.CI_TARGET
  time-to-accuracy  the model's race recipe (lenet: its fast recipe; the others: their default) until test
                    accuracy first reaches the model's TARGET_ACCURACY,
                    timed to 1/20 of an epoch (train.TIMING_POINTS); training seconds only (evaluation is
                    not counted), plus, from the same run, the seconds to the tutorial's final accuracy
  tutorial          the tutorial's pipeline (bench/tutorial.py: per-sample PIL transforms, 4-worker
                    DataLoader, batch 32) timed step by step on the same machine in the same run; its 5-epoch
                    time is derived as TUTORIAL_IMAGES / its measured images/s (running it takes minutes), and
                    says so. Its steps come in segments, each right after a short zoo run (the default recipe
                    on 10,240 images): zoo vs tutorial images/s is the median over these adjacent pairs, so a
                    machine whose speed drifts (shared CI hosts do) moves both sides of each ratio alike
  peer              the fastest peer recipe (bench/peer.py: train_mnist_fast's one epoch of Adam and
                    one-cycle on a larger CNN), PEER_SEEDS seeds: its median training time and mean accuracy;
                    lenet's time to 99% (its fast recipe) is set against that time, at the same precision
The ratios (zoo images/s vs tutorial, tutorial 5 epochs vs zoo to its accuracy, lenet to 99% vs the peer's
epoch) are filled in at the end of the run. The targets and the tutorial's figures are in mnist_zoo/targets.py.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from bench import peer, timing, tutorial
from bench import stats as ci
from bench.conftest import race_recipe, skip_untrained_in_quick
from mnist_zoo.cpu import Contention
from mnist_zoo.models import list_models
from mnist_zoo.precision import choose
from mnist_zoo.recipes import recipe_for
from mnist_zoo.targets import TARGET_ACCURACY, TUTORIAL_ACCURACY, TUTORIAL_IMAGES
from mnist_zoo.train import TIMING_POINTS, train

# The most epochs timed per model (an epoch of mlp takes about a second, of lenet several): fewer once the
# epoch's images/s is known to within timing.CI_TARGET, from the SEGMENTS parts of each epoch.
EPOCH_ROUNDS = {"mlp": 3, "dnn": 3, "lenet": 2, "cnn": 1}  # a plugin model: 1
SEGMENTS = 20
TUTORIAL_STEPS, TUTORIAL_STEPS_QUICK = 320, 120
# Pairs: a zoo run of PAIR_ZOO_IMAGES (40 lenet steps of its batch of 256, under a second), then PAIR_STEPS
# tutorial steps (8 pairs, quick: 3). The first PAIR_REFILL tutorial steps after a zoo run are not timed: the
# workers filled their queue while the zoo ran, and serving it is not their steady rate.
PAIR_STEPS, PAIR_REFILL, PAIR_ZOO_IMAGES = 40, 10, 10_240
TUTORIAL_MODELS_QUICK = ("lenet",)  # the ratio the check watches; the others only in full runs
PEER_SEEDS, PEER_SEEDS_QUICK = 3, 1


@pytest.mark.parametrize("model_name", list_models())
def test_epoch(benchmark, new_row, bench_options, torch_device, splits_on, model_name, precision):
    skip_untrained_in_quick(bench_options, model_name)
    threads = bench_options.train_threads
    train_split, _ = splits_on(torch_device)
    torch.set_num_threads(threads)
    # the default recipe's batch size and optimizer, one epoch
    recipe = recipe_for(model_name, epochs=1, precision=precision)
    benchmark.group = "training: seconds per epoch"
    runs, segments = [], []  # segments: seconds of each 1/SEGMENTS of an epoch, every epoch run
    most = 1 if bench_options.quick else EPOCH_ROUNDS.get(model_name, 1)

    def interval() -> (
        tuple[float, float] | None
    ):  # of images/s, over the segments (bootstrap: bench/stats.py)
        total = ci.sum_ci(segments)
        return ci.rate_ci(total, len(runs) * len(train_split)) if total else None

    def epochs() -> None:  # until images/s is known to within CI_TARGET, or `most` epochs
        while len(runs) < most:
            stamps: list[float] = []
            runs.append(
                train(
                    model_name,
                    recipe,
                    train_split,
                    seed=0,
                    device=torch_device,
                    on_step=lambda i, stamps=stamps: stamps.append(i["elapsed"]),
                )
            )
            steps = np.diff([0.0, *stamps])
            segments.extend(float(part.sum()) for part in np.array_split(steps, SEGMENTS))
            ips = len(runs) * len(train_split) / sum(segments)
            if (ci.half_width(interval(), ips) or 1) <= timing.CI_TARGET:
                return

    with Contention() as contention:
        benchmark.pedantic(epochs, rounds=1, iterations=1)
    benchmark.stats.stats.data[:] = [r.train_seconds for r in runs]  # its table: seconds per epoch
    seconds = statistics.median(r.train_seconds for r in runs)
    new_row(
        "epoch",
        model=model_name,
        device=str(torch_device),
        threads=threads,
        recipe="default",
        precision=runs[0].precision,
        precision_reason=runs[0].precision_reason,
        batch_size=recipe.batch_size,
        images=len(train_split),
        epoch_seconds=seconds,
        images_per_second=len(train_split) / seconds,
        images_per_second_ci=interval(),
        rounds=len(runs),
        optimisation_seconds=[round(r.train_seconds, 3) for r in runs],
        **contention.record(),
    )
    assert all(r.images_seen == len(train_split) for r in runs)
    assert all(torch.isfinite(torch.tensor(r.history[-1]["train_loss"])) for r in runs), "training diverged"


@pytest.mark.parametrize("model_name", list_models())
def test_time_to_accuracy(
    benchmark, new_row, bench_options, torch_device, train_to_target, trained_runs, model_name, precision
):
    skip_untrained_in_quick(bench_options, model_name)
    target = TARGET_ACCURACY[model_name]
    benchmark.group = "training: time to target accuracy (wall time, evaluations included)"
    args = (model_name, torch_device, precision)
    result = benchmark.pedantic(train_to_target, args=args, rounds=1, warmup_rounds=0)
    if torch_device.type == "cpu" and precision == "fp32":
        trained_runs[model_name] = result  # quick runs measure accuracy and latency on these models
    curve = [[round(h["train_seconds"], 3), h["eval_accuracy"]] for h in result.history]
    images_to_tutorial = next(
        (h["images"] for h in result.history if h["eval_accuracy"] >= TUTORIAL_ACCURACY), None
    )
    crossing = next((h for h in result.history if h["eval_accuracy"] >= target), None)
    last = result.history[-1] if result.history else {}
    new_row(
        "time-to-accuracy",
        model=model_name,
        device=str(torch_device),
        threads=bench_options.train_threads,
        recipe=race_recipe(model_name, bench_options.quick),
        precision=result.precision,
        precision_reason=result.precision_reason,
        target=target,
        reached=crossing is not None,
        seconds_to_target=result.seconds_to(target),
        epochs_to_target=crossing and crossing["epoch"],
        accuracy=last.get("eval_accuracy"),
        timing_points_per_epoch=TIMING_POINTS,
        curve=curve,
        tutorial_accuracy=TUTORIAL_ACCURACY,
        seconds_to_tutorial_accuracy=result.seconds_to(TUTORIAL_ACCURACY),
        images_to_tutorial_accuracy=images_to_tutorial,
        **result.contention,
    )
    best = max((a for _, a in curve), default=0.0)
    assert crossing is not None, (
        f"{model_name} did not reach {target:.1%} test accuracy within its {race_recipe(model_name, bench_options.quick)} recipe "
        f"in {result.precision} (best {best:.2%})"
    )


# The tutorial's 4 workers on a machine with fewer cores is what the reference row measures, so torch's
# warning about it is expected here.
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("model_name", list_models())
def test_tutorial_pipeline(benchmark, new_row, bench_options, splits_on, model_name):
    if bench_options.quick and model_name not in TUTORIAL_MODELS_QUICK:
        pytest.skip(
            f"--bench-quick measures the tutorial pipeline for {', '.join(TUTORIAL_MODELS_QUICK)} only"
        )
    threads = bench_options.train_threads
    torch.set_num_threads(threads)
    steps = TUTORIAL_STEPS_QUICK if bench_options.quick else TUTORIAL_STEPS
    benchmark.group = "training: tutorial pipeline, seconds per step of 32 images"
    zoo_recipe = recipe_for(model_name, epochs=1)  # the default recipe's batch size and optimizer
    zoo_split = splits_on("cpu")[0].subset(torch.arange(PAIR_ZOO_IMAGES))
    zoo_rates: list[float] = []
    step, close = tutorial.stepper(model_name, seed=0)
    calls = 0

    def before_step() -> None:  # pedantic's setup, not timed: a zoo run before each segment of tutorial steps
        nonlocal calls
        if calls % PAIR_STEPS == 0:
            zoo_rates.append(train(model_name, zoo_recipe, zoo_split, seed=0).images_per_second)
            for _ in range(PAIR_REFILL):
                step()
        calls += 1

    try:
        for _ in range(tutorial.WARMUP):  # not timed: worker start-up and the first prefetch
            step()
        train(model_name, zoo_recipe, zoo_split, seed=0)  # nor is the zoo's first call
        with Contention() as contention:  # the workers are children of this process: their time is ours
            benchmark.pedantic(step, setup=before_step, rounds=steps)
    finally:
        close()
    # A stream's rate is images over total time: the mean step, not the median.
    per_step = benchmark.stats.stats.mean
    ips = tutorial.BATCH_SIZE / per_step
    samples = benchmark.stats.stats.data
    segments = [samples[i : i + PAIR_STEPS] for i in range(0, len(samples), PAIR_STEPS)]
    paired = [
        zoo * sum(seg) / (tutorial.BATCH_SIZE * len(seg))
        for zoo, seg in zip(zoo_rates, segments, strict=True)
    ]
    derivation = (
        f"tutorial 5-epoch time = {TUTORIAL_IMAGES:,} images / measured {ips:,.0f} images/s "
        "(derived from its throughput, not run for 5 epochs)"
    )
    new_row(
        "tutorial",
        model=model_name,
        device="cpu",
        threads=threads,
        batch_size=tutorial.BATCH_SIZE,
        workers=tutorial.WORKERS,
        steps=steps,
        images_per_second=ips,
        five_epochs_seconds_derived=TUTORIAL_IMAGES / ips,
        derivation=derivation,
        paired_zoo_images_per_second=[round(z) for z in zoo_rates],
        paired_ratios=[round(p, 3) for p in paired],
        vs_tutorial_paired=statistics.median(paired),
        vs_tutorial_paired_ci=list(ci.ratio_ci(paired) or []) or None,  # over the pairs (6 or more)
        images_per_second_ci=ci.rate_ci(
            ci.sum_ci([sum(seg) for seg in segments]), tutorial.BATCH_SIZE * len(samples)
        ),
        pairing=f"{PAIR_ZOO_IMAGES:,} zoo images, then {PAIR_STEPS} timed tutorial steps",
        **contention.record(),
    )
    assert ips > 0 and paired


def test_peer_recipe(benchmark, new_row, bench_options, splits_on, precision):
    threads = bench_options.train_threads
    chosen = choose(precision, "peer", "cpu")
    torch.set_num_threads(threads)
    train_split, test_split = splits_on("cpu")
    benchmark.group = "training: the fastest peer recipe, one epoch"
    runs, rounds = [], PEER_SEEDS_QUICK if bench_options.quick else PEER_SEEDS
    seeds = iter(range(rounds))

    def one_run():
        runs.append(peer.train_peer(train_split, test_split, seed=next(seeds), precision=chosen))

    with Contention() as contention:
        benchmark.pedantic(one_run, rounds=rounds)
    seconds = statistics.median(s for s, _ in runs)
    new_row(
        "peer",
        model="peer",
        device="cpu",
        threads=threads,
        recipe="train_mnist_fast: Adam lr 1e-2 betas (0.7, 0.9), one-cycle, batch 256, 1 epoch, no shuffling",
        **chosen.record(),
        train_seconds=seconds,
        images_per_second=len(train_split) / seconds,
        accuracy=statistics.fmean(a for _, a in runs),
        accuracies=[round(a, 4) for _, a in runs],
        seeds=len(runs),
        **contention.record(),
    )
    assert all(a > 0.95 for _, a in runs), "the peer recipe did not train: its re-implementation is broken"
