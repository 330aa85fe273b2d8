"""Calibrate `python -m bench check --against`: how often it flags a regression that is not there (A/A: a tree
against itself), and how often it flags one that is (a known slowdown injected into head's timed calls).

    python -m bench.calibrate --aa 20 --slowdowns 0.05:5 0.10:10 0.20:5 --json calibration.json
    python -m bench.calibrate --aa 2 --slowdowns 0.10:2          # a quick look (minutes)
    python -m bench.calibrate --replay calibration.json --slowdowns 0.05:1000 0.20:1000 --aa 1000

REF (--against, default HEAD) is checked out and both trees' exports are built once, as the check does; then
each repetition is one check's rounds (bench/against.py rounds(), the same stopping rule), fresh for every
repetition. Run it from a clean tree for A/A: head is the working tree. The table gives, per slowdown, the
checks that flagged at least one figure (A/A: false alarms), the figures flagged over all figure-checks, the
fewest checks that flagged any one figure (its power, the weakest figure's), the checks left undecided (exit
75), and the pairs and minutes they took, with the contention the machine had meanwhile.

--replay FILE runs no process: it replays checks from the pairs a calibration measured (each A/A pair's change
of every figure), drawing pairs at random (with replacement, all figures of a pair together, so that what a
moment of the machine did to all of them stays together), a slowdown applied to head as --inject-slowdown
would, and the check's rule (MIN_PAIRS to MAX_PAIRS, stop when no interval holds 1 - threshold; no time cap).
More checks than a machine can run in hours, at the price of reusing the same pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from bench import against, stats
from mnist_zoo.schema import read_json
from mnist_zoo.targets import CHECK_THRESHOLD
from mnist_zoo.util import UserError, atomic_write, guarded, out

EXAMPLE = (
    "example: python -m bench.calibrate --aa 20 --slowdowns 0.05:5 0.10:10 0.20:5 --json calibration.json"
)


def plan(aa: int, slowdowns: list[str]) -> list[float]:
    """The slowdown of each repetition, A/A (0.0) and injected ones interleaved so that a change of the
    machine's load during the hours of a calibration falls on all of them alike."""
    groups = [[0.0] * aa]
    for item in slowdowns:
        try:
            fraction, times = item.split(":")
            fraction, times = float(fraction), int(times)
        except ValueError:
            raise UserError(f"--slowdowns takes FRACTION:TIMES like 0.10:10, got {item!r}") from None
        if not (0 <= fraction < math.inf and times >= 0):  # NaN fails too; -1 would divide by zero
            raise UserError(
                f"--slowdowns takes a fraction of at least 0 and a count of at least 0, got {item!r}"
            )
        groups.append([fraction] * times)
    order = []
    while any(groups):
        for g in groups:
            if g:
                order.append(g.pop())
    return order


def summarize(runs: list[dict]) -> list[dict]:
    """Per slowdown: checks, checks flagging any figure, figures flagged, the weakest figure's flags, undecided."""
    rows = []
    for slowdown in sorted({r["slowdown"] for r in runs}):
        mine = [r for r in runs if r["slowdown"] == slowdown]
        figures = sorted({n for r in mine for n in r["verdicts"]})
        flagged = {n: sum(r["verdicts"].get(n) == stats.REGRESSED for r in mine) for n in figures}
        rows.append(
            {
                "slowdown": slowdown,
                "checks": len(mine),
                "checks_flagging": sum(
                    any(v == stats.REGRESSED for v in r["verdicts"].values()) for r in mine
                ),
                "figures_flagged": sum(flagged.values()),
                "figure_checks": len(mine) * len(figures),
                "weakest": min(flagged.items(), key=lambda kv: kv[1]) if flagged else None,
                "undecided": sum(any(v == stats.UNDECIDED for v in r["verdicts"].values()) for r in mine),
                "pairs": [min(r["pairs"] for r in mine), max(r["pairs"] for r in mine)],
                "minutes": sum(r["seconds"] for r in mine) / len(mine) / 60,
                "contention": [min(r["contention"][0] for r in mine), max(r["contention"][1] for r in mine)],
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = "| slowdown | checks | checks flagging | figures flagged | weakest figure | undecided | pairs | min/check | contention |"
    out.print(head, highlight=False, soft_wrap=True)
    out.print("|" + " --- |" * 9, highlight=False)
    for r in rows:
        weakest = f"{r['weakest'][1]}/{r['checks']} {r['weakest'][0]}" if r["weakest"] else "-"
        cells = [
            "none (A/A)" if r["slowdown"] == 0 else f"{r['slowdown']:.0%}",
            str(r["checks"]),
            f"{r['checks_flagging']}",
            f"{r['figures_flagged']}/{r['figure_checks']}",
            weakest,
            str(r["undecided"]),
            f"{r['pairs'][0]}-{r['pairs'][1]}",
            f"{r['minutes']:.1f}" if r["minutes"] else "replayed",
            f"{r['contention'][0]:.0%}-{r['contention'][1]:.0%}" if r["minutes"] else "-",
        ]
        out.print("| " + " | ".join(cells) + " |", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m bench.calibrate", description=__doc__, epilog=EXAMPLE, formatter_class=fmt
    )
    parser.add_argument(
        "--against", default="HEAD", help="the base ref (default: HEAD, for A/A on a clean tree)"
    )
    parser.add_argument("--aa", type=int, default=20, help="A/A checks (default: 20)")
    parser.add_argument(
        "--slowdowns", nargs="*", default=["0.10:10"], metavar="F:N", help="N checks at slowdown F"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="threads of every measured runtime (default: 1)"
    )
    parser.add_argument("--threshold", type=float, default=CHECK_THRESHOLD, help="the check's threshold")
    parser.add_argument("--json", type=Path, help="write every check's verdicts and the table here")
    parser.add_argument(
        "--replay", type=Path, metavar="FILE", help="replay checks from a calibration's rounds"
    )
    args = parser.parse_args(argv)
    return guarded(lambda: replay(args) if args.replay else calibrate(args))


def replay(args: argparse.Namespace, seed: int = 0) -> int:
    """Checks replayed from the A/A rounds of a calibration file (see the module's docstring)."""
    import numpy as np

    runs = read_json(args.replay, CALIBRATION_SCHEMA, max_bytes=MAX_CALIBRATION_BYTES)["runs"]
    pairs = []  # one dict per measured A/A pair: figure -> its change head/base
    for run in (r for r in runs if r["slowdown"] == 0):
        series = run["changes_by_pair"]
        for i in range(max((len(v) for v in series.values()), default=0)):
            pairs.append({n: v[i] for n, v in series.items() if i < len(v) and v[i]})  # None: it failed
    if len(pairs) < against.MIN_PAIRS:
        raise UserError(
            f"{args.replay} holds {len(pairs)} A/A pairs; at least {against.MIN_PAIRS} are needed"
        )
    rng = np.random.default_rng(seed)
    replayed = []
    for slowdown in plan(args.aa, args.slowdowns):
        drawn = [pairs[i] for i in rng.integers(0, len(pairs), against.MAX_PAIRS)]
        for n in range(against.MIN_PAIRS, against.MAX_PAIRS + 1):
            verdicts = {}
            for name in sorted({f for p in drawn for f in p}):  # a failed pair lacks some
                # a slower head: each of its calls (steps) longer by the slowdown, its speed lower
                ratios = [p[name] / (1 + slowdown) for p in drawn[:n] if name in p]
                verdicts[name] = stats.decide(stats.ratio_ci(ratios), args.threshold)
            if not set(verdicts.values()) & set(stats.OPEN):
                break
        replayed.append(
            {"slowdown": slowdown, "verdicts": verdicts, "pairs": n, "seconds": 0.0, "contention": [0.0, 0.0]}
        )
    out.print(f"replayed from {len(pairs)} measured A/A pairs of {args.replay}", highlight=False)
    print_table(summarize(replayed))
    return 0


def calibrate(args: argparse.Namespace) -> int:
    order = plan(args.aa, args.slowdowns)
    runs: list[dict] = []
    commit = against.resolve(args.against)
    limits = (against.MIN_PAIRS, against.MAX_PAIRS, against.ROUNDS_CAP_S)
    with against.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="mnist-zoo-calibrate-") as tmp:
        tmp = Path(tmp)
        with against.checked_out(commit, tmp / "base") as where:
            trees = [
                against.Tree("base", where, args.against, tmp / "b"),
                against.Tree("head", against.ROOT, "head", tmp / "h"),
            ]
            against.build(trees)
            for i, slowdown in enumerate(order, 1):
                base, head = (against.Tree(t.side, t.path, t.label, t.artifacts) for t in trees)
                inject = {"head": slowdown} if slowdown else {}
                t0 = time.monotonic()
                result, how = against.rounds(base, head, args.threads, args.threshold, inject, limits)
                runs.append(
                    {
                        "slowdown": slowdown,
                        "verdicts": {c.name: c.verdict for c in result},
                        "changes": {c.name: [c.change, c.ci] for c in result},
                        "changes_by_pair": {n: against.pair_changes(base, head, n) for n in head.values},
                        "rounds": how["rounds"],
                        "pairs": how["pairs"],
                        "seconds": time.monotonic() - t0,
                        "contention": how["contention"],
                        "lanes": how["lanes"],
                    }
                )
                flagged = [c.name for c in result if c.verdict == stats.REGRESSED]
                out.print(
                    f"check {i}/{len(order)} (slowdown {slowdown:.0%}): {len(flagged)} flagged",
                    highlight=False,
                )
                if args.json:
                    save(args.json, runs)
    print_table(summarize(runs))
    return 0


# What --replay reads: a file as save() writes it. changes_by_pair[figure]: its change head/base in each pair
# (positive), None where a pair failed.
_CHANGES = {"type": "array", "items": {"type": ["number", "null"], "exclusiveMinimum": 0}}
_RUN = {
    "type": "object",
    "required": ["slowdown", "pairs", "changes_by_pair"],
    "properties": {
        "slowdown": {"type": "number", "minimum": 0},
        "pairs": {"type": "integer", "minimum": 0},
        "verdicts": {"type": "object", "additionalProperties": {"type": "string"}},
        "changes_by_pair": {"type": "object", "additionalProperties": _CHANGES},
        "seconds": {"type": "number"},
    },
}
CALIBRATION_SCHEMA = {
    "type": "object",
    "required": ["runs"],
    "properties": {"runs": {"type": "array", "items": _RUN}},
}
MAX_CALIBRATION_BYTES = 16 << 20  # a check's pairs take ~20 KB: 800 checks, days of a machine's time


def save(path: Path, runs: list[dict]) -> None:
    doc = {"runs": runs, "table": summarize(runs), "python": sys.version.split()[0]}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1)))


if __name__ == "__main__":
    import mnist_zoo.launch

    mnist_zoo.launch.run("bench.calibrate")
