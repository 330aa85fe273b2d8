"""The benchmark session: options, shared fixtures, derived figures and the summary tables.

    pytest --benchmark-only                                   # everything, all cores (from the repo root)
    pytest --benchmark-only --bench-threads 1,2 -k inference  # does 1 thread beat 2?
    pytest --benchmark-only --bench-quick --benchmark-json out.json   # the CI subset (python -m bench check)
    python -m bench report out.json                           # the same tables from a saved file

Full runs use the trained checkpoints (mnist_zoo.train.ensure_trained trains a missing one with the default
recipe first). Quick runs (--bench-quick) use the models the training group trains in the same run until they
reach their target accuracy, so CI never depends on a cached checkpoint and pays for training once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch

from bench import machine, results
from bench.runtimes import Exports
from mnist_zoo import data
from mnist_zoo.models import get_model
from mnist_zoo.util import UserError

QUICK_BUDGET_S = 0.3  # seconds of timed calls per latency row in --bench-quick (full: --benchmark-max-time)
SEED = 0
# Evaluations per epoch in time-to-accuracy runs: the resolution of the time, against the cost of evaluating.
EVALS_PER_EPOCH = {"mlp": 10, "dnn": 5, "lenet": 5}


@dataclass(frozen=True)
class Options:
    threads: tuple[int, ...]  # inference rows run at each; accuracy rows at the largest
    train_threads: int  # training rows (the zoo's and the tutorial's main process)
    devices: tuple[str, ...]
    quick: bool
    budget_s: float  # timed seconds per latency row
    min_rounds: int


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("mnist-zoo benchmarks")
    g.addoption("--bench-threads", default=None, metavar="N[,M...]",
                help="threads for every runtime (torch and ORT intra-op); a list runs each (default: all cores)")  # fmt: skip
    g.addoption("--bench-train-threads", type=int, default=None, metavar="N",
                help="torch threads for the training rows, zoo and tutorial alike (default: all cores)")  # fmt: skip
    g.addoption("--bench-device", default="auto", choices=("auto", "cpu", "cuda"),
                help="auto: cpu rows, plus cuda rows (skipped with the reason when absent) (default: auto)")  # fmt: skip
    g.addoption("--bench-quick", action="store_true",
                help="the CI subset: short timings, no torch.compile, models trained in-run to their target")  # fmt: skip


def _parse_threads(value: str | None, option: str = "--bench-threads") -> tuple[int, ...]:
    if value in (None, "", "all"):
        return (machine.cores(),)
    try:
        threads = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise pytest.UsageError(f"{option} takes integers like 2 or 1,2, got {value!r}") from None
    if not threads or threads[0] < 1:
        raise pytest.UsageError(f"{option} must be at least 1, got {value!r}")
    return threads


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def options(config: pytest.Config) -> Options:
    if not hasattr(config, "_mnist_zoo_bench"):
        quick = bool(config.getoption("--bench-quick", False))
        device = config.getoption("--bench-device", "auto")
        budget = QUICK_BUDGET_S if quick else float(config.getoption("benchmark_max_time", 1.0))
        config._mnist_zoo_bench = Options(
            threads=_parse_threads(config.getoption("--bench-threads", None)),
            train_threads=_parse_threads(_text(config.getoption("--bench-train-threads", None)), "--bench-train-threads")[0],
            devices=("cpu", "cuda") if device == "auto" else (device,), quick=quick, budget_s=budget,
            min_rounds=int(config.getoption("benchmark_min_rounds", 5)),
        )  # fmt: skip
    return config._mnist_zoo_bench


def pytest_configure(config: pytest.Config) -> None:
    options(config)  # a bad --bench-* value is a one-line usage error now, not a traceback during collection


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`device` and `threads` arguments of benchmark tests are parametrised from the options."""
    opts = options(metafunc.config)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", opts.devices)
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", opts.threads, ids=[f"{t}t" for t in opts.threads])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # --benchmark-only / --benchmark-skip (the default addopts): deselect what will not run, rather than list
    # every unit test (or every benchmark) as a skip in the summary; "N deselected" still says they exist.
    only, skip = config.getoption("benchmark_only", False), config.getoption("benchmark_skip", False)
    if only or skip:
        keep = [i for i in items if ("benchmark" in getattr(i, "fixturenames", ())) == bool(only)]
        if len(keep) < len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in set(keep)])
            items[:] = keep
    # Training first: in quick mode the accuracy and latency rows use the models it trains.
    order = {"test_training.py": 0, "test_accuracy.py": 1, "test_inference.py": 2}
    bench_items = [i for i in items if i.path.parent.name == "bench" and i.path.name in order]
    if bench_items:
        first = items.index(bench_items[0])
        rest = [i for i in items if i not in set(bench_items)]
        bench_items.sort(key=lambda i: order[i.path.name])
        items[:] = rest[:first] + bench_items + rest[first:]


@pytest.fixture(scope="session")
def bench_options(request: pytest.FixtureRequest) -> Options:
    return options(request.config)


@pytest.fixture(scope="session")
def splits_on(train_split, test_split):
    """device -> (train, test) splits on it, copied once per session (a CUDA row does not time the copy)."""
    cache: dict[str, tuple[data.Split, data.Split]] = {}

    def get(device: torch.device | str) -> tuple[data.Split, data.Split]:
        key = str(device)
        if key not in cache:
            cache[key] = (train_split.to(device), test_split.to(device))
        return cache[key]

    return get


@pytest.fixture
def torch_device(device: str) -> torch.device:
    """The torch device of this row; a cuda row on a machine without CUDA is skipped, never run on the CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here: torch.cuda.is_available() is False")
    return torch.device(device)


@pytest.fixture(scope="session")
def train_to_target(splits_on, bench_options: Options):
    """run(name, device) -> TrainResult: the default recipe, evaluated on the test set evals_per_epoch times an
    epoch, stopped at the first evaluation reaching the model's target accuracy (evaluation time not counted)."""
    from mnist_zoo.train import recipe_for, train

    def run(name: str, device: torch.device | str = "cpu"):
        torch.set_num_threads(bench_options.train_threads)
        train_split, test_split = splits_on(device)
        return train(name, recipe_for(name), train_split, test_split, seed=SEED, device=device,
                     evals_per_epoch=EVALS_PER_EPOCH[name], stop_at_accuracy=results.TARGET_ACCURACY[name])  # fmt: skip

    run.evals_per_epoch = EVALS_PER_EPOCH
    return run


@pytest.fixture(scope="session")
def trained_runs() -> dict:
    """model name -> TrainResult of its CPU time-to-accuracy run in this session (test_training fills it)."""
    return {}


@pytest.fixture(scope="session")
def zoo_model(bench_options: Options, trained_runs: dict, train_to_target):
    """factory(name) -> (model on the CPU in eval mode, where its weights come from)."""
    from mnist_zoo.checkpoint import checkpoint_path
    from mnist_zoo.train import ensure_trained

    cache: dict[str, tuple] = {}

    def get(name: str, trained: bool = True) -> tuple[torch.nn.Module, str]:
        """trained=False (latency rows) lets a quick run that trained nothing use a seeded, untrained model:
        the time of a forward pass does not depend on the weights, and the row says which it had."""
        if name in cache:
            return cache[name]
        if not bench_options.quick:
            try:
                model, meta = ensure_trained(name)
            except (UserError, data.DataError) as e:  # e.g. a damaged checkpoint: one line per row
                pytest.fail(str(e), pytrace=False)
            source = (f"checkpoint {checkpoint_path(name)} ({meta.get('recipe')} recipe, {meta.get('epochs')} "
                      f"epochs, seed {meta.get('seed')})")  # fmt: skip
        elif name in trained_runs or trained:
            run = trained_runs.get(name) or train_to_target(name, "cpu")
            model = get_model(name)  # default memory layout: training leaves lenet channels_last on the CPU
            model.load_state_dict({k: v.contiguous() for k, v in run.model.state_dict().items()})
            acc = run.final.accuracy if run.final else float("nan")
            source = f"trained in this run until {results.TARGET_ACCURACY[name]:.1%} (reached {acc:.2%})"
        else:
            key = f"{name}:untrained"
            if key not in cache:
                torch.manual_seed(SEED)
                cache[key] = (
                    get_model(name).eval(),
                    f"untrained (seed {SEED}): latency does not depend on weights",
                )
            return cache[key]
        cache[name] = (model.cpu().eval(), source)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def exports(tmp_path_factory, train_split) -> Exports:
    try:  # the quantiser's own choice of calibration images (seeded, from the training set)
        from export.quantize import calibration_images
    except ModuleNotFoundError:  # onnxruntime absent: the int8 rows skip, but the other exports still work
        return Exports(tmp_path_factory.mktemp("exports"), None)
    return Exports(tmp_path_factory.mktemp("exports"), calibration_images(train_split))


@pytest.fixture
def new_row(benchmark, bench_options: Options):
    """row(kind, **fields): start this benchmark's extra_info with what every row records."""

    def make(kind: str, **fields) -> dict:
        info = benchmark.extra_info
        info.update(format=results.FORMAT, kind=kind, quick=bench_options.quick, seed=SEED, cpu=machine.cpu_name(),
                    cores=machine.cores(), versions=machine.versions(), peak=machine.peak_flops())  # fmt: skip
        info.update(fields)
        if str(fields.get("device", "cpu")).startswith("cuda"):
            info["device_name"] = machine.cuda_device()
        return info

    return make


def _our_rows(config: pytest.Config) -> list[dict]:
    session = getattr(config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", [])
    return [
        b.extra_info
        for b in benchmarks
        if b and not b.has_error and b.extra_info.get("format") == results.FORMAT
    ]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus):
    # Before pytest-benchmark saves its JSON (its own sessionfinish wrapper runs inside this one): the ratios
    # between rows go into each row's extra_info, so --benchmark-json and autosaved files carry them.
    results.derive(_our_rows(session.config))
    yield


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    opts = options(config)
    machine_info["mnist_zoo"] = machine.describe(list(opts.threads), opts.train_threads, opts.quick)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    rows = _our_rows(config)
    if not rows:
        return
    from bench import report  # rich rendering only when there is something to show

    opts = options(config)
    doc = {"machine_info": {"mnist_zoo": machine.describe(list(opts.threads), opts.train_threads, opts.quick)},
           "benchmarks": [{"extra_info": r} for r in rows]}  # fmt: skip
    buffer = io.StringIO()
    tty = terminalreporter.hasmarkup  # piped output gets room for every column rather than an 80-column wrap
    report.render(doc, buffer, width=terminalreporter._tw.fullwidth if tty else 150, color=tty)
    terminalreporter.write_sep("=", "mnist-zoo benchmark summary")
    terminalreporter.write(buffer.getvalue())
