"""Command line: ``python -m ttc.report DIR [DIR ...] [--out OUT] [--title T] [--dataset NAME]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ttc.report.build import write_report
from ttc.report.data import ReportError
from ttc.report.stats import RESAMPLES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other bad-input error here, not the usage block
        self.exit(2, f"error: {message} (see python -m ttc.report --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m ttc.report",
        description="Leaderboard report (Markdown, HTML, PNG plots) over ttc.run sweep or run directories.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="DIR", help="sweep or run directories")
    parser.add_argument("--out", type=Path, help="output directory (default: <first DIR>/report)")
    parser.add_argument("--title", help="report title")
    parser.add_argument("--dataset", help="only runs of this dataset (needed when the inputs mix datasets)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error("--resamples must be at least 1")
    if args.seed < 0:  # numpy's generators take none below 0, in a traceback
        parser.error("--seed must be 0 or more")
    try:
        written = write_report(args.inputs, out=args.out, title=args.title, dataset=args.dataset,
                               resamples=args.resamples, seed=args.seed)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {written[-2]}")
    print(f"        {written[-1]}")
    print(f"plots:  {', '.join(p.name for p in written[:-2])}")
    return 0
