"""python -m bench {report,plot,compare,check}: a saved run's tables and pictures, two runs side by side, and
the CI regression check.

pytest --benchmark-only --benchmark-json=run.json   # run the benchmarks (tables at the end)
python -m bench report run.json                      # the same tables from the saved file
python -m bench plot run.json                        # its pictures: reports/bench/*.png
pytest --benchmark-only --benchmark-autosave         # (twice) runs saved in .benchmarks/
python -m bench compare                              # the two newest saved runs side by side: what changed
python -m bench check --against main                 # this tree vs main, both measured here, interleaved;
                                                     # exit 1 on regression, 75 when undecided
python -m bench check                                # quick run vs bench/baseline.json (another machine's)
python -m bench check --update-baseline              # after an intended change: rewrite the baseline
python -m bench.calibrate --aa 20 --slowdowns 0.10:10  # the check's false alarms and power (docs/regression-check.md)
"""

from __future__ import annotations

# Run as `python -m bench`, this file imports itself again as a plain module under mnist_zoo.launch's guard, so
# that Ctrl-C during the imports below (torch: seconds) also ends in one line and exit code 130.
if __name__ == "__main__":
    import mnist_zoo.launch

    mnist_zoo.launch.run("bench.__main__")

import argparse
import sys
from pathlib import Path

from bench import against, check, history, plot, report, results
from mnist_zoo.util import UserError, guarded, out

REPORT_EXAMPLE = "example: python -m bench report .benchmarks/Linux-CPython-3.12-64bit/0001_run.json"
PLOT_EXAMPLE = "example: python -m bench plot run.json --out docs"
COMPARE_EXAMPLES = """examples:
  pytest --benchmark-only --benchmark-autosave    # run this (at least) twice, then:
  python -m bench compare                         # the two newest saved runs
  python -m bench compare 0001 run.json           # a saved run number, or any results file"""
CHECK_EXAMPLES = """examples:
  python -m bench check --against main
  python -m bench check --against origin/main --markdown verdict.md
  python -m bench check
  python -m bench check --results run.json
  python -m bench check --update-baseline"""


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    what = "print the tables of a saved run (--benchmark-json or autosave file)"
    p = sub.add_parser("report", help=what, epilog=REPORT_EXAMPLE)
    p.add_argument("file", help="a pytest-benchmark JSON file written by `pytest bench --benchmark-only ...`")
    p.add_argument("--width", type=int, help="table width in characters (default: the terminal's)")

    what = "write the pictures of a saved run (latency, threads, deployment) as PNG files"
    p = sub.add_parser("plot", help=what, description=plot.__doc__, epilog=PLOT_EXAMPLE, formatter_class=fmt)
    p.add_argument("file", help="a pytest-benchmark JSON file with mnist-zoo rows")
    p.add_argument(
        "--out", type=Path, default=plot.OUT, help=f"folder for the PNG files (default: {plot.OUT})"
    )

    what = "two runs side by side with the change of each figure (default: the two newest autosaved)"
    p = sub.add_parser(
        "compare", help=what, description=history.__doc__, epilog=COMPARE_EXAMPLES, formatter_class=fmt
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="then [now]: a results file or a saved run number")
    p.add_argument(
        "--storage",
        type=Path,
        default=history.STORAGE,
        help="pytest-benchmark's storage (default: .benchmarks)",
    )
    p.add_argument("--width", type=int, help="table width in characters (default: the terminal's)")

    what = "this tree against a git ref (--against) or the committed baseline; exit 1 on regression"
    p = sub.add_parser(
        "check", help=what, description=check.__doc__, epilog=CHECK_EXAMPLES, formatter_class=fmt
    )
    p.add_argument(
        "--baseline", type=Path, default=check.BASELINE, help="baseline file (default: bench/baseline.json)"
    )
    p.add_argument(
        "--results", help="compare this saved run (made with --bench-quick) instead of running one"
    )
    p.add_argument(
        "--tolerance", type=float, help="allowed fall of a ratio below the baseline (default: the baseline's)"
    )
    default = "(default: the baseline's; with --update-baseline: all cores)"
    p.add_argument(
        "--threads", type=int, help=f"threads per runtime in the quick run {default}; --against: 1"
    )
    p.add_argument("--train-threads", type=int, help=f"threads for the training rows {default}")
    pause = f"seconds a contended run waits for the machine to quieten (default: {check.PAUSE_S})"
    p.add_argument("--pause", type=float, default=check.PAUSE_S, help=pause)
    p.add_argument("--keep", help="also keep the quick run's JSON at this path")
    p.add_argument("--all", action="store_true", help="list passing floors in the table too")
    p.add_argument("--update-baseline", action="store_true", help="write the baseline from this run instead")
    against.add_arguments(p)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "report":
        report.render(results.load(args.file), sys.stdout, width=args.width, color=sys.stdout.isatty())
        return 0
    if args.command == "plot":
        notes: list[str] = []
        for path in plot.plot_run(args.file, args.out, notes):
            out.print(str(path), highlight=False, soft_wrap=True)
        for note in notes:
            out.print(note, highlight=False, soft_wrap=True)
        return 0
    if args.command == "compare":
        if len(args.runs) > 2:
            raise UserError(f"compare takes at most two runs (then, now), got {len(args.runs)}")
        history.compare(args.runs, args.storage, report.make_console(sys.stdout, args.width))
        return 0
    if args.tolerance is not None and not 0 <= args.tolerance < 1:
        raise UserError(f"--tolerance is a fraction in [0, 1), got {args.tolerance}")
    for option, value in (("--threads", args.threads), ("--train-threads", args.train_threads)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be at least 1, got {value}")
    return check.main(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: run(args))
