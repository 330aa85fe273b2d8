"""python -m bench {report,check}: the benchmark's tables from a saved run, and the CI regression check.

pytest --benchmark-only --benchmark-json run.json   # run the benchmarks (tables at the end)
python -m bench report run.json                      # the same tables from the saved file
python -m bench check                                # quick run vs bench/baseline.json; exit 1 on regression
python -m bench check --update-baseline              # after an intended change: rewrite the baseline
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_zoo.data import DataError
from mnist_zoo.util import UserError, fail


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("report", help="print the tables of a saved run (--benchmark-json or autosave file)",
                       epilog="example: python -m bench report .benchmarks/Linux-CPython-3.12-64bit/0001_run.json")  # fmt: skip
    p.add_argument("file", help="a pytest-benchmark JSON file written by `pytest bench --benchmark-only ...`")
    p.add_argument("--width", type=int, help="table width in characters (default: the terminal's)")

    from bench import check

    p = sub.add_parser("check", help="quick benchmark run compared with the baseline; exit 1 on regression",
                       formatter_class=fmt, description=check.__doc__,
                       epilog="examples:\n  python -m bench check\n  python -m bench check --results run.json\n"
                              "  python -m bench check --update-baseline")  # fmt: skip
    p.add_argument(
        "--baseline", type=Path, default=check.BASELINE, help="baseline file (default: bench/baseline.json)"
    )
    p.add_argument(
        "--results", help="compare this saved run (made with --bench-quick) instead of running one"
    )
    p.add_argument(
        "--tolerance", type=float, help="allowed fall of a ratio below the baseline (default: the baseline's)"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="threads per runtime in the quick run (default: the baseline's; with --update-baseline: all cores)",
    )
    p.add_argument(
        "--train-threads",
        type=int,
        help="threads for the training rows (default: the baseline's; with --update-baseline: all cores)",
    )
    p.add_argument(
        "--attempts", type=int, default=2, help="measure failing ratios up to this many times (default 2)"
    )
    p.add_argument("--keep", help="also keep the quick run's JSON at this path")
    p.add_argument("--all", action="store_true", help="list passing floors in the table too")
    p.add_argument("--update-baseline", action="store_true", help="write the baseline from this run instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            from bench import report, results

            report.render(results.load(args.file), sys.stdout, width=args.width, color=sys.stdout.isatty())
            return 0
        from bench import check

        if args.tolerance is not None and not 0 <= args.tolerance < 1:
            raise UserError(f"--tolerance is a fraction in [0, 1), got {args.tolerance}")
        for name in ("threads", "train_threads"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
        return check.main(args)
    except (UserError, DataError) as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
