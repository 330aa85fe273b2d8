"""The benchmark session: options, shared fixtures, derived figures and the summary tables.

    pytest --benchmark-only                                   # everything (from the repo root)
    pytest --benchmark-only --bench-threads 1,2 -k inference  # does 1 thread beat 2?
    pytest --benchmark-only --bench-threads all -k inference  # every thread count from 1 to the CPUs
    pytest --benchmark-only --bench-precision fp32,bf16       # training and inference rows in each precision
    pytest --benchmark-only --bench-quick --benchmark-json=out.json   # the CI subset (python -m bench check)
    python -m bench report out.json                           # the same tables from a saved file

Threads: every runtime gets the same count, by default every CPU that other processes leave idle (on a busy
machine fewer, said in the header), because a thread team on a core another process is using waits at every
operator. Full runs use the trained checkpoints (mnist_zoo.fit.ensure_trained trains a missing one with the default
recipe first). Quick runs (--bench-quick) use the models the training group trains in the same run until they
reach their target accuracy, so CI never depends on a cached checkpoint and pays for training once.

Deployment costs (the `deployment` fixture): each runtime x model's artifact size, and its cold start and peak
memory in fresh processes (bench/coldstart.py: --bench-deploy-runs of them, 3 by default, 0 in --bench-quick;
torch.compile, which compiles for tens of seconds in each, at most one), measured once per session and put in
every row of that runtime and model.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from bench import coldstart, machine, report, results
from bench.plugin import DEPLOY_RUNS
from bench.progress import Progress
from bench.runtimes import RUNTIMES, Exports, artifact
from mnist_zoo import cpu, data
from mnist_zoo.models import get_model, model_info, plugin_problems
from mnist_zoo.targets import TARGET_ACCURACY, TUTORIAL_ACCURACY
from mnist_zoo.util import UserError, cpu_name, device_name

QUICK_BUDGET_S = (
    0.3  # the most seconds of timed calls per latency row in --bench-quick (full: --benchmark-max-time)
)
SEED = 0
PRECISIONS = ("fp32", "bf16")  # auto is a choice for training runs, not a row: a row says what it measured
# Models that --bench-quick (CI's check) does not train: minutes each to their targets on 2 cores. Their training
# and accuracy rows are in the full run; tests/test_export.py verifies their exports; latency rows run untrained.
# Plugin models are not trained in --bench-quick either (skip_untrained_in_quick).
QUICK_UNTRAINED = ("cnn",)
# pytest-benchmark's default columns: 4.x sets this list as the option's default, 5.x leaves the option None
# and fills the list in later (so a comparison with the list alone keeps all ten on 5.x).
DEFAULT_COLUMNS = ["min", "max", "mean", "stddev", "median", "iqr", "outliers", "ops", "rounds", "iterations"]
OUR_COLUMNS = ["median", "iqr", "ops", "rounds"]


@dataclass(frozen=True)
class Options:
    threads: tuple[int, ...]  # inference rows run at each; accuracy rows at the largest
    train_threads: int  # training rows (the zoo's and the tutorial's main process)
    devices: tuple[str, ...]
    quick: bool
    deploy_runs: int  # fresh processes per runtime x model for cold start and peak memory (0: not measured)
    budget_s: float  # timed seconds per latency row
    min_rounds: int
    busy: dict  # the machine when the session started: cpu.Contention.record() of a short sample
    note: str  # why the default threads are fewer than the CPUs, or ""
    precisions: tuple[str, ...] = ("fp32",)  # the training and inference rows' precisions (--bench-precision)
    models: tuple[str, ...] | None = None  # --bench-models, as registry names (None: every installed model)
    runtimes: tuple[str, ...] | None = None  # --bench-runtimes (None: every installed runtime)


OPTIONS = pytest.StashKey[Options]()
NOT_RUN = pytest.StashKey[int]()  # benchmarks deselected by --benchmark-skip (the default addopts)


def _threads(value: str | None, idle: int) -> tuple[int, ...]:
    if value in (None, ""):
        return (idle,)
    if value == "all":
        return tuple(range(1, max(1, int(cpu.available())) + 1))
    try:
        threads = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise pytest.UsageError(f"--bench-threads takes integers like 2 or 1,2, got {value!r}") from None
    if not threads or threads[0] < 1:
        raise pytest.UsageError(f"--bench-threads must be at least 1, got {value!r}")
    return threads


def parse_precisions(value: str | None) -> tuple[str, ...]:
    """--bench-precision: fp32 by default (the default suite's time unchanged), or a list such as fp32,bf16."""
    if value in (None, ""):
        return ("fp32",)
    given = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not given or any(p not in PRECISIONS for p in given):
        raise pytest.UsageError(
            f"--bench-precision takes {' or '.join(PRECISIONS)} (a list: fp32,bf16), got {value!r}"
        )
    return given


def parse_selection(value: str | None, option: str, resolve: Callable[[str], str]) -> tuple[str, ...] | None:
    """--bench-models / --bench-runtimes: names or specs, each resolved once to its registry name (a spec's
    plugin registered here, before the benchmark modules are collected); None when not given."""
    if value in (None, ""):
        return None
    try:
        names = tuple(dict.fromkeys(resolve(v.strip()) for v in value.split(",") if v.strip()))
    except UserError as e:
        raise pytest.UsageError(f"{option}: {e}") from None
    if not names:
        raise pytest.UsageError(f"{option} takes a comma-separated list, got {value!r}")
    return names


def _runtime_name(name: str) -> str:
    from bench.runtimes import LABELS, runtime

    return (
        name if name in LABELS and name not in RUNTIMES else runtime(name).name
    )  # ort-web: a row of its own


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its own options
def pytest_configure(config: pytest.Config) -> None:
    # Read the options now: a bad --bench-* value is a one-line usage error, not a traceback in collection.
    quick = config.getoption("--bench-quick")
    device = config.getoption("--bench-device")
    train_threads = config.getoption("--bench-train-threads")
    if train_threads is not None and train_threads < 1:
        raise pytest.UsageError(f"--bench-train-threads must be at least 1, got {train_threads}")
    deploy_runs = config.getoption("--bench-deploy-runs")
    if deploy_runs is not None and deploy_runs < 0:
        raise pytest.UsageError(f"--bench-deploy-runs must be 0 or more, got {deploy_runs}")
    busy = cpu.sample()
    idle = cpu.default_threads(busy, quiet=True)
    most = max(1, min(cpu.TORCH_DEFAULT_THREADS, int(cpu.available())))
    if config.getoption("benchmark_only") and not sys.stdout.isatty():  # a CI log: say how far it got
        config.pluginmanager.register(Progress(), "mnist-zoo-progress")
    config.stash[OPTIONS] = Options(
        threads=_threads(config.getoption("--bench-threads"), idle),
        train_threads=train_threads or idle,
        devices=("cpu", "cuda") if device == "auto" else (device,),
        quick=quick,
        deploy_runs=(0 if quick else DEPLOY_RUNS) if deploy_runs is None else deploy_runs,
        budget_s=QUICK_BUDGET_S if quick else float(config.getoption("benchmark_max_time")),
        min_rounds=int(config.getoption("benchmark_min_rounds")),
        busy=busy.record(),
        note=cpu.lowered(idle, most, busy) if idle < most else "",
        precisions=parse_precisions(config.getoption("--bench-precision")),
        models=parse_selection(
            config.getoption("--bench-models"), "--bench-models", lambda m: model_info(m).name
        ),
        runtimes=parse_selection(config.getoption("--bench-runtimes"), "--bench-runtimes", _runtime_name),
    )
    # pytest-benchmark's own table has ten columns of seconds for every row (230 characters wide): keep the
    # ones that matter beside our summary, unless asked for others.
    config.option.benchmark_columns = narrow_columns(config.getoption("benchmark_columns"))


def narrow_columns(columns: list[str] | None) -> list[str]:
    """pytest-benchmark's columns: ours unless the user asked for others (None or the full default: not asked)."""
    return OUR_COLUMNS if columns is None or list(columns) == DEFAULT_COLUMNS else columns


def pytest_report_header(config: pytest.Config) -> str | None:
    opts = config.stash[OPTIONS]
    share = opts.busy["contention"]
    busy = f"other processes used {share:.0%} of the CPUs' time at start" if share is not None else ""
    threads = f"mnist-zoo benchmarks: threads {', '.join(map(str, opts.threads))}; {busy}"
    from bench.runtimes import runtime_problems

    broken = [f"mnist-zoo: warning: {p}" for p in (*plugin_problems(), *runtime_problems())]
    return [threads] + ([f"mnist-zoo: {opts.note}"] if opts.note else []) + broken


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`device` and `threads` arguments of benchmark tests are parametrised from the options."""
    opts = metafunc.config.stash[OPTIONS]
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", opts.devices)
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", opts.threads, ids=[f"{t}t" for t in opts.threads])
    if "precision" in metafunc.fixturenames:
        metafunc.parametrize("precision", opts.precisions)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # --benchmark-only / --benchmark-skip (the default addopts): deselect what will not run, rather than list
    # every unit test (or every benchmark) as a skip; the terminal summary says how to run the benchmarks.
    only = config.getoption("benchmark_only")
    if only or config.getoption("benchmark_skip"):
        benchmarks = {i for i in items if "benchmark" in getattr(i, "fixturenames", ())}
        dropped = [i for i in items if (i in benchmarks) != only]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [i for i in items if (i in benchmarks) == only]
        if not only:
            config.stash[NOT_RUN] = len(dropped)
    opts = config.stash[OPTIONS]
    if opts.models is not None or opts.runtimes is not None:
        unwanted = [i for i in items if not _selected(i, opts)]
        if unwanted:
            config.hook.pytest_deselected(items=unwanted)
            items[:] = [i for i in items if _selected(i, opts)]
    # Training first: in quick mode the accuracy and latency rows use the models it trains.
    order = {"test_training.py": 0, "test_accuracy.py": 1, "test_inference.py": 2}
    bench_items = [i for i in items if i.path.parent.name == "bench" and i.path.name in order]
    if bench_items:
        first = items.index(bench_items[0])
        rest = [i for i in items if i.path.parent.name != "bench" or i.path.name not in order]
        bench_items.sort(key=lambda i: order[i.path.name])
        items[:] = rest[:first] + bench_items + rest[first:]


def _selected(item: pytest.Item, opts: Options) -> bool:
    """Whether --bench-models and --bench-runtimes keep this benchmark (rows of no model or runtime stay)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    runtime = "ort-web" if item.path.name == "test_web.py" else params.get("runtime")
    model_ok = opts.models is None or params.get("model_name", opts.models[0]) in opts.models
    return model_ok and (opts.runtimes is None or runtime is None or runtime in opts.runtimes)


@pytest.fixture(scope="session")
def bench_options(request: pytest.FixtureRequest) -> Options:
    return request.config.stash[OPTIONS]


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
    """run(name, device, precision) -> TrainResult: the model's race recipe (race_recipe: lenet's fast one, the
    others' default), stopped after the epoch in which test accuracy first reaches the model's target;
    result.seconds_to(accuracy) times that crossing and the tutorial's accuracy to 1/20 of an epoch (train.py,
    TIMING_POINTS; evaluation is not timed)."""
    from mnist_zoo.recipes import recipe_for
    from mnist_zoo.train import train

    def run(name: str, device: torch.device | str = "cpu", precision: str = "fp32"):
        torch.set_num_threads(bench_options.train_threads)
        train_split, test_split = splits_on(device)
        return train(
            name,
            recipe_for(name, race_recipe(name, bench_options.quick), precision=precision),
            train_split,
            test_split,
            seed=SEED,
            device=device,
            timed=(TUTORIAL_ACCURACY,),
            stop_at_accuracy=TARGET_ACCURACY[name],
        )

    return run


def race_recipe(name: str, quick: bool = False) -> str:
    """The recipe the time-to-accuracy rows race with: the model's fast recipe where it has one (lenet's, against
    the peer recipe), else its default. Quick runs (bench check's floors) train the default recipe: lenet's fast
    one ends a few hundredths of a point above its 99% target, so another CPU's rounding could fail CI's floor,
    where the default crosses 99% with more than an epoch to spare; the baseline's ratios were measured on it."""
    from mnist_zoo.recipes import FAST

    return "fast" if name in FAST and not quick else "default"


def skip_untrained_in_quick(bench_options: Options, name: str, trained: bool = True) -> None:
    if bench_options.quick and trained and name in QUICK_UNTRAINED:
        pytest.skip(f"--bench-quick does not train {name} (minutes to its target): the full run measures it")
    if bench_options.quick and trained and model_info(name).source != "mnist_zoo.models":
        # A plugin's training time is unknown here: CI's quick check stays bounded; its latency rows still run.
        pytest.skip(f"--bench-quick does not train plugin models ({name}): the full run measures it")


@pytest.fixture(scope="session")
def trained_runs() -> dict:
    """model name -> TrainResult of its CPU time-to-accuracy run in this session (test_training fills it)."""
    return {}


@pytest.fixture(scope="session")
def zoo_model(bench_options: Options, trained_runs: dict, train_to_target):
    """factory(name) -> (model on the CPU in eval mode, where its weights come from)."""
    from mnist_zoo.checkpoint import checkpoint_path
    from mnist_zoo.fit import ensure_trained

    cache: dict[str, tuple] = {}

    def get(name: str, trained: bool = True) -> tuple[torch.nn.Module, str]:
        """trained=False (latency rows) lets a quick run that trained nothing use a seeded, untrained model:
        the time of a forward pass does not depend on the weights, and the row says which it had."""
        if name in cache:
            return cache[name]
        skip_untrained_in_quick(bench_options, name, trained)
        if not bench_options.quick:
            try:
                model, meta = ensure_trained(name)
            except UserError as e:  # e.g. a damaged checkpoint: one line per row
                pytest.fail(str(e), pytrace=False)
            recipe = f"{meta.get('recipe')} recipe, {meta.get('epochs')} epochs, seed {meta.get('seed')}"
            source = f"checkpoint {checkpoint_path(name)} ({recipe})"
        elif name in trained_runs or trained:
            run = trained_runs.get(name) or train_to_target(name, "cpu")
            model = get_model(name)  # default memory layout: training leaves lenet channels_last on the CPU
            model.load_state_dict({k: v.contiguous() for k, v in run.model.state_dict().items()})
            acc = run.final.accuracy if run.final else float("nan")
            source = f"trained in this run until {TARGET_ACCURACY[name]:.1%} (reached {acc:.2%})"
        else:
            key = f"{name}:untrained"
            if key not in cache:
                torch.manual_seed(SEED)
                source = f"untrained (seed {SEED}): latency does not depend on weights"
                cache[key] = (get_model(name).eval(), source)
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


@pytest.fixture(scope="session")
def deployment(bench_options: Options, exports: Exports):
    """get(runtime, model, name) -> the deployment fields of every row of that runtime and model:
    artifact_bytes, cold_start_s and peak_rss_mb (None when --bench-deploy-runs is 0) and how they were
    measured (`deployment`). Measured once per session, at the largest thread count."""
    cache: dict[tuple[str, str], dict] = {}

    def get(runtime: str, model: torch.nn.Module, name: str) -> dict:
        if (name, runtime) not in cache:
            path = artifact(runtime, model, exports, name)
            fields = {"artifact_bytes": path.stat().st_size}
            runs = bench_options.deploy_runs
            runs = min(runs, 1) if runtime == "compile" else runs
            if runs:
                fields.update(coldstart.measure(runtime, path, name, max(bench_options.threads), runs))
            else:
                note = "cold start and peak memory not measured (--bench-deploy-runs 0; --bench-quick)"
                fields.update(cold_start_s=None, peak_rss_mb=None, deployment={"note": note})
            cache[name, runtime] = fields
        return cache[name, runtime]

    return get


@pytest.fixture
def new_row(benchmark, bench_options: Options):
    """row(kind, **fields): start this benchmark's extra_info with what every row records."""

    def make(kind: str, **fields) -> dict:
        info = benchmark.extra_info
        info.update(format=results.FORMAT, kind=kind, quick=bench_options.quick, seed=SEED, cpu=cpu_name())
        info.update(cores=len(cpu.affinity()), versions=machine.versions())
        info.update(fields)
        if str(fields.get("device", "cpu")).startswith("cuda"):
            info["device_name"] = device_name(fields["device"])
        return info

    return make


def _our_rows(config: pytest.Config) -> list[dict]:
    benchmarks = getattr(getattr(config, "_benchmarksession", None), "benchmarks", [])
    done = [b for b in benchmarks if b and not b.has_error]
    return [b.extra_info for b in done if b.extra_info.get("format") == results.FORMAT]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus):
    # Before pytest-benchmark saves its JSON (its own sessionfinish wrapper runs inside this one): the ratios
    # between rows go into each row's extra_info, so --benchmark-json and autosaved files carry them.
    results.derive(_our_rows(session.config))
    yield


def _machine(config: pytest.Config) -> dict:
    opts = config.stash[OPTIONS]
    return machine.describe(list(opts.threads), opts.train_threads, opts.quick, opts.busy)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["mnist_zoo"] = _machine(config)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table: the summary is the last thing shown
def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if config.stash.get(NOT_RUN, 0):
        n = config.stash[NOT_RUN]
        terminalreporter.write_line(f"{n} benchmarks not run: pytest --benchmark-only runs them")
    rows = _our_rows(config)
    if not rows:
        return
    doc = {"machine_info": {"mnist_zoo": _machine(config)}, "benchmarks": [{"extra_info": r} for r in rows]}
    buffer = io.StringIO()
    tty = terminalreporter.hasmarkup
    # The terminal's width, or COLUMNS when piped; a pipe without COLUMNS gets 100 rather than an 80-column wrap.
    width = terminalreporter._tw.fullwidth if tty or os.environ.get("COLUMNS") else 100
    report.render(doc, buffer, width=width, color=tty)
    terminalreporter.write_sep("=", "mnist-zoo benchmark summary")
    terminalreporter.write(buffer.getvalue())
