"""Progress of a benchmark run off a terminal (a CI log, `| tee`): a line whenever a benchmark group finishes.

    [bench] inference lenet done; 120 of 255 benchmarks in 9 min, about 8 min left

pytest's own dots say nothing about time, and a benchmark run is minutes of them. A group is a benchmark file
and model (bench/test_inference.py's lenet rows: "inference lenet"). What is left is estimated from the mean
time (setup, call and teardown) of the finished benchmarks of each file, applied to those still to run; a file
none of whose benchmarks has finished gets its TYPICAL_S, scaled by how this run's finished files compare with
theirs (a training row costs five times an inference row: one mean for all said 46 min for a 17-min run).
bench/conftest.py registers this plugin for `--benchmark-only` runs whose stdout is not a terminal.
"""

from __future__ import annotations

import time

import pytest


def group_of(item: pytest.Item) -> str:
    """The benchmark group an item belongs to: its file and model."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = item.path.stem.removeprefix("test_")
    return f"{name} {params['model_name']}" if "model_name" in params else name


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# Seconds per benchmark of each file in a full run on 2 cores (AMD EPYC VM, 2026-12): only their proportions
# matter, since the run's own pace scales them.
TYPICAL_S = {
    "test_training.py": 11.4,
    "test_accuracy.py": 6.4,
    "test_inference.py": 2.3,
    "test_scaling.py": 10.0,
    "test_web.py": 5.0,
}


class Progress:
    def __init__(self) -> None:
        self.left: dict[str, set[str]] = {}  # group -> node ids still to finish
        self.files: dict[str, str] = {}  # node id -> its file
        self.spent: dict[str, float] = {}  # node id -> seconds so far (setup, call, teardown)
        self.start = time.monotonic()
        self.reporter = None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for item in session.items:
            if "benchmark" in getattr(item, "fixturenames", ()):
                self.left.setdefault(group_of(item), set()).add(item.nodeid)
                self.files[item.nodeid] = item.path.name
        self.start = time.monotonic()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.files:
            return
        self.spent[report.nodeid] = self.spent.get(report.nodeid, 0.0) + report.duration
        group = next((g for g, ids in self.left.items() if report.nodeid in ids), None)
        if report.when != "teardown" or group is None:
            return
        self.left[group].discard(report.nodeid)
        if not self.left[group]:
            del self.left[group]
            self.say(group)

    def say(self, group: str) -> None:
        waiting = [n for ids in self.left.values() for n in ids]
        typical = sum(TYPICAL_S.get(self.files[n], 0.0) for n in self.spent)
        pace = sum(self.spent.values()) / typical if typical else None  # this run against TYPICAL_S

        def mean(file: str) -> float:
            done = [t for n, t in self.spent.items() if self.files[n] == file]
            if done:
                return sum(done) / len(done)
            if pace is not None and file in TYPICAL_S:
                return TYPICAL_S[file] * pace
            return sum(self.spent.values()) / len(self.spent)

        elapsed = minutes(time.monotonic() - self.start)
        line = f"[bench] {group} done; {len(self.spent)} of {len(self.files)} benchmarks in {elapsed}"
        line += f", about {minutes(sum(mean(self.files[n]) for n in waiting))} left" if waiting else ""
        if self.reporter is not None:
            self.reporter.write_line(line)
