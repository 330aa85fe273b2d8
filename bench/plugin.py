"""The benchmark's command-line options, a pytest plugin loaded before any conftest file (`-p bench.plugin` in
pyproject.toml's addopts).

    pytest --benchmark-only --bench-threads all       # parsed as an option and its value, from any folder

Declared in bench/conftest.py, they would be unknown when pytest reads the command line for the first time, to
choose which conftest files to load: it would take `all` in `--bench-threads all` for a path to test, load no
bench/conftest.py, and stop at "unrecognized arguments: --bench-threads". Everything else about the benchmark
session is in bench/conftest.py.
"""

from __future__ import annotations

import pytest

DEPLOY_RUNS = 3  # fresh processes per runtime x model for cold start and peak memory (quick: none)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mnist-zoo benchmarks")
    group.addoption(
        "--bench-threads",
        metavar="N[,M...]",
        help="threads for every runtime (torch, ORT and OpenVINO); a list runs each; all: 1 to the CPUs "
        "available (default: the idle CPUs)",
    )
    group.addoption(
        "--bench-train-threads",
        type=int,
        metavar="N",
        help="torch threads for the training rows, zoo and tutorial alike (default: the idle CPUs)",
    )
    group.addoption(
        "--bench-device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: cpu rows, plus cuda rows (skipped with the reason when absent) (default: auto)",
    )
    group.addoption(
        "--bench-precision",
        metavar="P[,Q]",
        help="fp32, bf16 or both (fp32,bf16): the training rows, and the inference rows of the runtimes that "
        "run bf16 (the others are skipped with the reason) (default: fp32)",
    )
    group.addoption(
        "--bench-models",
        metavar="LIST",
        help="the models to measure: zoo names, plugin names or module:callable specs, comma-separated "
        "(default: every installed model, the zoo's and the plugins')",
    )
    group.addoption(
        "--bench-runtimes",
        metavar="LIST",
        help="the runtimes to measure: built-in names (eager, ort-fp32, ..., ort-web), plugin names or "
        "module:attribute specs, comma-separated (default: every installed runtime)",
    )
    group.addoption(
        "--bench-quick",
        action="store_true",
        help="the CI subset: short timings, no torch.compile, models trained in-run to their target",
    )
    group.addoption(
        "--bench-deploy-runs",
        type=int,
        metavar="N",
        help="fresh processes per runtime and model timing the cold start and peak memory; 0 skips them "
        f"(default: {DEPLOY_RUNS}; --bench-quick: 0; torch.compile: at most 1, it compiles in each)",
    )
