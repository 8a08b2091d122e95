"""The per-epoch metrics CSV of a run folder."""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Optional


class MetricsWriter:
    """Appends one row per epoch to ``metrics.csv``; on resume keeps only rows of finished epochs."""

    def __init__(self, path: str, keep_before_epoch: Optional[int] = None):
        self.path = path
        self.fields: Optional[List[str]] = None
        if keep_before_epoch is not None and os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            rows = [r for r in rows if int(r["epoch"]) < keep_before_epoch]
            if rows:
                self.fields = list(rows[0])
                with open(path, "w", newline="", encoding="utf-8") as f:
                    w = csv.DictWriter(f, fieldnames=self.fields)
                    w.writeheader()
                    w.writerows(rows)
            else:
                os.unlink(path)

    def write(self, row: Dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            new = True
        else:
            new = False
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            f.flush()
