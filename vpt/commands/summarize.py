"""``vpt summarize RUN_OR_JSON ... [--csv FILE]``: one table over a set of runs.

Reads every ``results.json`` (``vpt train``, incl. base/novel/HM of --base-to-novel runs) and every
``eval*.json`` (``vpt eval --json``, incl. --transfer targets) under the given folders or files. Printed
as Markdown: one row per group of runs whose resolved configs differ only by the seeds (train.seed,
data.split_seed) or by where they ran (device, workers, output folder), with the same backbone weights,
mean ± std over the group's runs and the seeds it holds. Runs of one method, data and shots that differ in
anything else (backbone, weights, lr, epochs, ...) get rows of their own; the `setting` column says what
sets each apart, and the notes under the table say what was averaged and what was kept apart.
"""
from __future__ import annotations

import argparse
import csv
import io
from typing import List, Optional


def register(sub) -> None:
    p = sub.add_parser("summarize", help="table of top-1 / base / novel / HM over a set of runs (mean ± std over seeds)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="RUN_OR_JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.set_defaults(func=run)


def print_table(paths: List[str], csv_path: Optional[str] = None) -> None:
    from ..tasks.summary import markdown
    from ..tasks.summary import summarize
    header, rows, notes = summarize(paths)
    print(markdown(header, rows), end="")
    if notes:
        print()
        print("\n".join(notes))
    if csv_path:
        from ..io import atomic_write_text
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())


def run(args) -> int:
    if args.csv:
        from ._paths import check_output_file
        check_output_file(args.csv, "--csv", "summary.csv")
    print_table(args.paths, args.csv)
    return 0
