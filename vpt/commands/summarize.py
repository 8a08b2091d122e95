"""``vpt summarize RUN_OR_JSON ... [--csv FILE]``: one table over a set of runs.

Reads every ``results.json`` (``vpt train``, incl. base/novel/HM of --base-to-novel runs) and every
``eval*.json`` (``vpt eval --json``, incl. --transfer targets) under the given folders or files; one
row per (method, data, shots) with mean ± std over seeds. Printed as Markdown.
"""
from __future__ import annotations

import argparse
import csv
import io
from typing import List, Optional


def register(sub) -> None:
    p = sub.add_parser("summarize", help="table of top-1 / base / novel / HM over a set of runs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="RUN_OR_JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.set_defaults(func=run)


def print_table(paths: List[str], csv_path: Optional[str] = None) -> None:
    from ..tasks.protocols import markdown, summary_table
    header, rows = summary_table(paths)
    print(markdown(header, rows), end="")
    if csv_path:
        from ..io import atomic_write_text
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())


def run(args) -> int:
    print_table(args.paths, args.csv)
    return 0
