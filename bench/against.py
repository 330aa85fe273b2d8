"""The regression check against a git ref: both trees measured on this machine, in one run, interleaved.

    python -m bench check --against main                 # this working tree (head) against main (base)
    python -m bench check --against HEAD~1 --markdown verdict.md

REF is checked out into a temporary git worktree (removed afterwards, also on Ctrl-C, SIGTERM or an error).
Each tree's artifacts (ONNX, int8, TorchScript) are made once, by that tree's own exporters, then rounds of
fresh processes measure every watched figure of one tree each (bench/probe.py: always head's copy, with the
tree under test on PYTHONPATH). A pair is one base and one head process pinned to the same CPUs (--threads of
them), taking turns slice by slice: what slows that CPU for a while (on a shared host, mostly another guest on
the core's other hyperthread: about 1.5x, for tens of milliseconds to seconds) slows both sides of a slice pair
alike. A round runs as many pairs at once as the CPUs hold, each on its own CPUs (at most MAX_LANES), and which
side goes first alternates. A pair's change head/base of a speed (above 1: head is faster) is the median over
its slice pairs; a figure's change is the median over the pairs and its 95% interval is taken over them (order
statistics, bench/stats.py). On a 2-core VM this cut the figure-pairs more than 5% off from about
a quarter (base and head at the same time on two CPUs) to about 1 in 20 (docs/regression-check.md).

A figure regressed when its whole interval lies below 1 - threshold (CHECK_THRESHOLD, 5%). Rounds go on,
from MIN_PAIRS to MAX_PAIRS or ROUNDS_CAP_S, while any figure's interval holds 1 - threshold (stats.OPEN:
undecided, or slower without being surely beyond the threshold); at the end, an interval that still holds both
1 and 1 - threshold is undecided, and only that gives exit 75 ("machine busy"): load alone does not, since
both sides of every pair saw it. Accuracy and agreement floors are judged as without --against, from a
quick run of head's benchmarks (bench/check.py). Threads are pinned (--threads, default 1) and recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE

from bench import stats
from mnist_zoo.cpu import Contention
from mnist_zoo.targets import CHECK_THRESHOLD
from mnist_zoo.util import UserError, out

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("probe.py")
MIN_PAIRS, MAX_PAIRS = 6, 24  # 6 pairs give a 97% interval (the extremes), 9 the 2nd and 8th of 9
ROUNDS_CAP_S = 200  # no new round starts after this many seconds of rounds, once MIN_PAIRS are done
MAX_LANES = 4  # pairs measured at once, each on its own CPUs
PROBE_TIMEOUT_S = 300


@dataclass
class Tree:
    side: str  # "base" or "head"
    path: Path
    label: str  # the ref and commit, as the output names it
    artifacts: Path = Path()
    values: dict[str, list[float | None]] = field(default_factory=dict)  # figure -> one value per pair
    slices: dict[str, list[list[float] | None]] = field(default_factory=dict)  # figure -> its slices per pair
    errors: dict[str, str] = field(default_factory=dict)

    def record(self, figures: dict[str, dict], pair: int) -> None:
        """Pair number `pair`'s figures: a value and the slices of each (None where the figure failed)."""
        for name, figure in figures.items():
            if "error" in figure:
                self.errors[name] = figure["error"]
            for series, value in ((self.values, figure.get("value")), (self.slices, figure.get("slices"))):
                kept = series.setdefault(name, [])
                kept += [None] * (pair - len(kept))  # earlier pairs that lacked the figure
                kept.append(value)


@dataclass
class Change:
    name: str
    unit: str
    base: float | None
    head: float | None
    change: float | None  # head/base of the speed: below 1, head is slower
    ci: tuple[float, float] | None
    verdict: str  # a stats.decide() verdict, or "missing" / "new" / "error"
    pairs: int
    note: str = ""


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout.strip()


def resolve(ref: str) -> str:
    """The commit `ref` names (a branch, tag or commit), or a one-line UserError."""
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise UserError(f"unknown git ref {ref!r}: no commit of that name in {ROOT} (git fetch it first?)")
    return done.stdout.strip()


@contextlib.contextmanager
def checked_out(commit: str, where: Path) -> Iterator[Path]:
    """`commit` in a detached git worktree at `where`, removed on the way out whatever happens."""
    try:  # `add` inside: a check stopped while git adds the worktree still removes what it registered
        git("worktree", "add", "--detach", "--quiet", str(where), commit)
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile, so that a killed check still removes its worktree."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave it be
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def probe(
    pairs: list[tuple[list[tuple[Tree, list[str]]], list[int] | None]],
) -> tuple[list[list[dict]], float]:
    """Run head's probe on each pair's two trees, all pairs at once, the two of a pair taking turns on the
    pair's CPUs (None: not pinned), in fresh processes: (their JSON, pair by pair, in order; other processes'
    share of the CPUs meanwhile)."""
    with Contention() as busy, contextlib.ExitStack() as stack:  # ExitStack: no probe outlives an error
        running = []
        for sides, cpus in pairs:
            to_first, to_second = os.pipe(), os.pipe()  # each (read end, write end)
            ends = [(to_first[0], to_second[1], "first"), (to_second[0], to_first[1], "second")]
            try:
                for (tree, options), (inbox, outbox, order) in zip(sides, ends, strict=True):
                    env = {**os.environ, "PYTHONPATH": str(tree.path)}
                    turns = ["--turns", str(inbox), str(outbox), order]
                    cmd = [sys.executable, str(PROBE), "measure", str(tree.artifacts), *options, *turns]
                    pin = None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)
                    proc = subprocess.Popen(
                        cmd,
                        cwd=tree.path,
                        env=env,
                        stdout=PIPE,
                        stderr=PIPE,
                        text=True,
                        preexec_fn=pin,
                        pass_fds=(inbox, outbox),
                    )
                    stack.callback(_end, proc)
                    running.append((tree, proc))
            finally:  # only the pair holds its pipes: when one of them ends, the other stops waiting for it
                for fd in (*to_first, *to_second):
                    os.close(fd)
        outputs = []
        for tree, proc in running:
            try:
                outputs.append((tree, proc, *proc.communicate(timeout=PROBE_TIMEOUT_S)))
            except subprocess.TimeoutExpired:
                raise UserError(
                    f"the probe on {tree.side} ({tree.label}) ran over {PROBE_TIMEOUT_S} s (machine overloaded?)"
                ) from None
    found = []
    for tree, proc, stdout, stderr in outputs:
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise UserError(f"the probe failed on {tree.side} ({tree.label}): {last}")
        try:
            found.append(json.loads(stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):  # no output, or a last line that is not its JSON
            raise UserError(f"the probe on {tree.side} ({tree.label}) printed no result") from None
    return [found[i : i + 2] for i in range(0, len(found), 2)], busy.share or 0.0


def lanes(threads: int) -> list[list[int] | None]:
    """The CPUs of each pair of a round, `threads` each, as many pairs as the CPUs hold (at most MAX_LANES);
    one pair, not pinned, where there are fewer than `threads`."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    n = min(len(cpus) // threads, MAX_LANES)
    return [cpus[i * threads : (i + 1) * threads] for i in range(n)] or [None]


def build(trees: list[Tree]) -> None:
    """Each tree's artifacts, made by its own exporters, the trees side by side (nothing is timed yet)."""
    with contextlib.ExitStack() as stack:
        running = []
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": str(tree.path)}
            cmd = [sys.executable, str(PROBE), "build", str(tree.artifacts)]
            log = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(cmd, cwd=tree.path, env=env, stdout=log, stderr=log, text=True)
            stack.callback(_end, proc)
            running.append((tree, proc, log))
        for tree, proc, log in running:
            try:
                code = proc.wait(timeout=PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise UserError(
                    f"building the exports of {tree.side} ({tree.label}) ran over {PROBE_TIMEOUT_S} s"
                ) from None
            if code != 0:
                log.seek(0)
                last = (log.read().strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
                raise UserError(f"building the exports of {tree.side} ({tree.label}) failed: {last}")


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def pair_changes(base: Tree, head: Tree, name: str) -> list[float | None]:
    """Figure `name`'s change head/base of its speed in each pair (None where a side failed): the median over
    the pair's slices, each head's slice against base's taken just before or after it on the same CPU (base
    time / head time, or head rate / base rate)."""
    rate = name.startswith("training/")
    pairs = zip(base.slices.get(name, []), head.slices.get(name, []), strict=False)
    return [
        statistics.median(y / x if rate else x / y for x, y in zip(b, h, strict=False)) if b and h else None
        for b, h in pairs
    ]


def changes(base: Tree, head: Tree, threshold: float) -> list[Change]:
    """Every watched figure's change head/base over the pairs, with its interval and verdict."""
    found = []
    for name in sorted(set(base.values) | set(head.values) | set(base.errors) | set(head.errors)):
        unit = "images/s" if name.startswith("training/") else "s"
        b, h = base.values.get(name, []), head.values.get(name, [])
        if name in head.errors or (any(b) and not any(h)):
            why = head.errors.get(name, "not measured")
            found.append(Change(name, unit, _median(b), None, None, None, "missing", 0, f"head: {why}"))
            continue
        if not any(b):
            why = base.errors.get(name, "not measured")
            found.append(Change(name, unit, None, _median(h), None, None, "new", 0, f"base: {why}"))
            continue
        ratios = [r for r in pair_changes(base, head, name) if r]
        ci = stats.ratio_ci(ratios)
        change = _median(ratios)
        found.append(
            Change(name, unit, _median(b), _median(h), change, ci, stats.decide(ci, threshold), len(ratios))
        )
    return found


def _median(values: list) -> float | None:
    kept = [v for v in values if v]  # a pair that failed left a None
    return statistics.median(kept) if kept else None


def rounds(
    base: Tree,
    head: Tree,
    threads: int,
    threshold: float,
    inject: dict[str, float],
    limits: tuple[int, int, float],
) -> tuple[list[Change], dict]:
    """Rounds of pairs until every figure is decided (or the limits): the changes and how it went."""
    least, most, cap = limits
    start, shares, cpus, pairs, done = time.monotonic(), [], lanes(threads), 0, 0
    allocators = set()
    while pairs < most:
        jobs = []
        for lane in cpus[: most - pairs]:
            # which side goes first alternates from pair to pair, so that a first-mover effect cancels
            order = (base, head) if (pairs + len(jobs)) % 2 == 0 else (head, base)
            options = [
                [*("--threads", str(threads)), "--inject", str(inject.get(t.side, 0.0))] for t in order
            ]
            jobs.append((list(zip(order, options, strict=True)), lane))
        results, share = probe(jobs)
        shares.append(share)
        for (sides, _), found in zip(jobs, results, strict=True):
            for (tree, _), result in zip(sides, found, strict=True):
                tree.record(result["figures"], pairs)
                allocators.add(result.get("allocator", "unknown"))
            pairs += 1
        done += 1
        result = changes(base, head, threshold)
        out.print(f"round {done}: {pairs} pairs: {_summary(result)}", highlight=False)
        if pairs >= least and not any(c.verdict in stats.OPEN for c in result):
            break
        if time.monotonic() - start > cap and pairs >= least:  # never without an interval
            break
    how = {"rounds": done, "pairs": pairs, "seconds": time.monotonic() - start, "threads": threads}
    how["lanes"], how["allocator"] = cpus, sorted(allocators)
    how["contention"] = [min(shares), max(shares)] if shares else None
    return changes(base, head, threshold), how


def mode(threads: int) -> str:
    """How the rounds run base and head, in words."""
    cpus = lanes(threads)
    if cpus == [None]:
        return "taking turns, one pair at a time (fewer CPUs than --threads: not pinned)"
    where = " and ".join(",".join(map(str, c)) for c in cpus if c is not None)
    return f"taking turns on the same CPUs, {len(cpus)} pair(s) at once (CPUs {where})"


def _summary(result: list[Change]) -> str:
    return ", ".join(f"{n} {v}" for v, n in sorted(Counter(c.verdict for c in result).items()))


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "images/s":
        return f"{value:,.0f}/s"
    return f"{value * 1e6:.1f} µs" if value < 1e-3 else f"{value * 1e3:.2f} ms"


def fmt_ci(ci) -> str:
    return "-" if ci is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


VERDICT_WORDS = {
    stats.REGRESSED: "REGRESSED",
    stats.OK: "ok",
    stats.SLOWER: "slower",
    stats.UNDECIDED: "undecided",
    "missing": "MISSING",
    "new": "new",
}


def failed(result: list[Change]) -> list[Change]:
    return [c for c in result if c.verdict in (stats.REGRESSED, "missing")]


def markdown(result: list[Change], how: dict, base: Tree, head: Tree, floors: str, verdict: str) -> str:
    """The verdict for a CI job summary: one table of changes with their intervals."""
    lines = [
        f"### mnist-zoo benchmark check: {verdict}",
        "",
        f"head `{head.label}` against base `{base.label}`, on one machine, {how['pairs']} pairs of fresh "
        f"processes, base and head taking turns; {how['threads']} thread(s); the probes' allocator: "
        f"{'; '.join(how.get('allocator') or ['not recorded'])}; a figure regressed when the whole 95% "
        f"interval of its change lies below {1 - how['threshold']:.2f}.",
        "",
        "| figure | base | head | head/base speed | 95% interval | verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in result:
        change = "-" if c.change is None else f"{c.change:.3f}"
        word = VERDICT_WORDS[c.verdict] + (f" ({c.note})" if c.note else "")
        lines.append(
            f"| {c.name} | {fmt_value(c.base, c.unit)} | {fmt_value(c.head, c.unit)} | {change} | {fmt_ci(c.ci)} | {word} |"
        )
    lines += ["", floors, ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[list[Change], dict, Tree, Tree]:
    """Measure head (this working tree) against args.against: (changes, how it went, base, head)."""
    commit = resolve(args.against)
    head_commit = git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    inject = {args.inject_into: args.inject_slowdown} if args.inject_slowdown else {}
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="mnist-zoo-against-") as tmp:
        tmp = Path(tmp)
        with checked_out(commit, tmp / "base") as where:
            base = Tree("base", where, f"{args.against} {commit[:8]}", tmp / "base-artifacts")
            head = Tree("head", ROOT, f"HEAD {head_commit}{dirty}", tmp / "head-artifacts")
            t0 = time.monotonic()
            out.print(f"building the exports of base ({base.label}) and head ({head.label})", highlight=False)
            build([base, head])
            out.print(
                f"built in {time.monotonic() - t0:.0f} s; measuring base and head {mode(args.threads)}",
                highlight=False,
            )
            limits = (args.min_pairs, args.max_pairs, args.rounds_cap)
            result, how = rounds(base, head, args.threads, args.threshold, inject, limits)
    how.update(threshold=args.threshold, injected=inject)
    return result, how, base, head


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--against", metavar="REF", help="measure this tree against a git ref on this machine")
    p.add_argument(
        "--threshold",
        type=float,
        default=CHECK_THRESHOLD,
        help=f"with --against: the slowdown that fails (default: {CHECK_THRESHOLD:.0%}%)",
    )
    p.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write the verdict as Markdown (CI summary)"
    )
    p.add_argument("--min-pairs", type=int, default=MIN_PAIRS, help=argparse.SUPPRESS)
    p.add_argument("--max-pairs", type=int, default=MAX_PAIRS, help=argparse.SUPPRESS)
    p.add_argument("--rounds-cap", type=float, default=ROUNDS_CAP_S, help=argparse.SUPPRESS)
    p.add_argument(
        "--inject-slowdown",
        type=float,
        default=0.0,
        metavar="F",
        help="calibration only: lengthen each timed call of one side by F of its time (bench/calibrate.py)",
    )
    p.add_argument(
        "--inject-into", choices=("base", "head"), default="head", help="the side --inject-slowdown slows"
    )
    p.add_argument("--speed-only", action="store_true", help="with --against: skip the floors' quick run")
