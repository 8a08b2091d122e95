"""The detection transfer table and its verdict sentences from benchmarks/detection_transfer.py's records.

    python benchmarks/make_detection_table.py            # print
    python benchmarks/make_detection_table.py --write    # replace the block between the markers in benchmarks/README.md

One table per scale: a row per (backbone, detector, arm) cell with test COCO mAP mean ± std over the final seeds
(and their range), mAP@0.5, the lr the sweep chose on val, the trainable share and the sweep's wall time; then
one plain sentence per (backbone, detector) comparing each prompt arm with the head-only arm (and with full
fine-tuning / the random-init control), saying "within the seed spread" when the gap is smaller than it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional

from make_table import replace_block  # sibling scripts (light: no torch at module level)
from transfer_sweep import record_edges

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "detection")
README = os.path.join(HERE, "README.md")
START, END = "<!-- detection-transfer-table:start -->", "<!-- detection-transfer-table:end -->"
BACKBONE_NAMES = {"effnet_lite0": "EfficientNet-Lite0 (ImageNet-1k)", "vit_tiny_cifar10": "ViT-Ti (vpt:vit_tiny_cifar10)"}
ARM_ORDER = ["head", "pixel_pad", "pixel_patch", "vpt_deep", "random_vpt_deep", "full"]
ARM_NAMES = {"head": "head only", "pixel_pad": "pixel pad", "pixel_patch": "pixel patch", "vpt_deep": "VPT-deep",
             "random_vpt_deep": "VPT-deep on the random-init copy", "full": "full fine-tuning"}


def load(root: str) -> List[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("benchmark") == "detection_transfer":
            out.append(rec)
    return out


def _key(r: dict) -> tuple:
    arm = ARM_ORDER.index(r["arm"]) if r["arm"] in ARM_ORDER else len(ARM_ORDER)
    return (list(BACKBONE_NAMES).index(r["backbone"]) if r["backbone"] in BACKBONE_NAMES else 99, r["detector"], arm)


def _pm(mean: float, std: Optional[float]) -> str:
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def table(recs: List[dict]) -> str:
    lines = ["| backbone | detector | arm | test mAP (seeds: range) | test mAP@0.5 | lr (val) | trainable | device | wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(recs, key=_key):
        lo, hi = r["test_mAP_range"]
        lr = r["best"]["params"].get("optim.lr")
        edge = f", **{'/'.join(record_edges(r).values())} edge**" if record_edges(r) else ""  # may lie beyond
        share = 100.0 * r["trainable_params"] / max(r["total_params"], 1)
        lines.append(f"| {BACKBONE_NAMES.get(r['backbone'], r['backbone'])} | {r['detector']} | "
                     f"{ARM_NAMES.get(r['arm'], r['arm'])} | {_pm(r['test_mAP_mean'], r['test_mAP_std'])} "
                     f"({r['test_n']}: {lo:.3f}–{hi:.3f}) | {_pm(r['test_mAP50_mean'], r['test_mAP50_std'])} | "
                     f"{lr:g} ({r['best']['val']:.3f}{edge}) | {share:.1f}% | {r['device'].split(' (')[0]} | "
                     f"{r['wall_seconds'] / 60:.0f} min |")
    return "\n".join(lines)


def gap(a: dict, b: dict) -> tuple:
    """(a's test mAP minus b's, the larger of their seed spreads): a difference within the spread is a tie."""
    return a["test_mAP_mean"] - b["test_mAP_mean"], max(a["test_mAP_std"] or 0.0, b["test_mAP_std"] or 0.0)


def compare(a: dict, b: dict) -> str:
    """'0.123 vs 0.100 (+0.023, beyond the seed spread)' for arm a against arm b."""
    d, spread = gap(a, b)
    where = "within the seed spread" if abs(d) <= spread else "beyond the seed spread"
    return f"{a['test_mAP_mean']:.3f} vs {b['test_mAP_mean']:.3f} ({d:+.3f}, {where} of {spread:.3f})"


def verdicts(recs: List[dict]) -> List[str]:
    """One sentence per (backbone, detector): each prompt arm against head only, and against full fine-tuning or
    the random-init control where those ran."""
    groups: Dict[tuple, Dict[str, dict]] = defaultdict(dict)
    for r in recs:
        groups[(r["backbone"], r["detector"])][r["arm"]] = r
    out = []
    for (bb, det), arms in sorted(groups.items(), key=lambda kv: _key({"backbone": kv[0][0], "detector": kv[0][1],
                                                                         "arm": "head"})):
        head = arms.get("head")
        parts = []
        for arm in ("pixel_pad", "pixel_patch", "vpt_deep"):
            if arm in arms and head is not None:
                r = arms[arm]
                d, spread = gap(r, head)
                word = "ties with" if abs(d) <= spread else "beats" if d > 0 else "loses to"
                parts.append(f"{ARM_NAMES[arm]} {word} head only, {compare(r, head)}")
        if "full" in arms:
            best = max((arms[a] for a in arms if a != "full"), key=lambda r: r["test_mAP_mean"], default=None)
            if best is not None:
                parts.append(f"full fine-tuning against the best frozen arm ({ARM_NAMES[best['arm']]}): "
                             f"{compare(arms['full'], best)}")
        if "vpt_deep" in arms and "random_vpt_deep" in arms:
            parts.append(f"the pretrained ViT against its random-init copy, both with VPT-deep: "
                         f"{compare(arms['vpt_deep'], arms['random_vpt_deep'])}")
        if parts:
            out.append(f"- {BACKBONE_NAMES.get(bb, bb)} + {det}: " + "; ".join(parts) + ".")
    return out


def render(recs: List[dict]) -> str:
    if not recs:
        return ("No records yet: run `python benchmarks/detection_transfer.py run --cells effnet_lite0:all:all "
                "--cells vit_tiny_cifar10:all:all`, then `python benchmarks/make_detection_table.py --write`.")
    blocks = []
    by_scale: Dict[str, List[dict]] = defaultdict(list)
    for r in recs:
        by_scale[r["scale"]].append(r)
    for scale, rs in sorted(by_scale.items()):
        epochs = sorted({r["epochs"] for r in rs})
        blocks.append(f"**{scale}** ({', '.join(map(str, epochs))} epochs, BCCD test split, COCO mAP; lr chosen on "
                      f"val, then mean ± std over the final seeds; **edge**: the best lr lies on the edge of the grid "
                      f"searched, after `--extend-edges` widened it where it could)\n\n" + table(rs) + "\n\n"
                      + "\n".join(verdicts(rs)))
    return "\n\n".join(blocks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=RESULTS)
    ap.add_argument("--scale", help="only this scale")
    ap.add_argument("--write", action="store_true", help="write between the markers in benchmarks/README.md")
    ap.add_argument("--readme", default=README)
    args = ap.parse_args(argv)
    recs = [r for r in load(args.root) if args.scale is None or r["scale"] == args.scale]
    text = render(recs)
    if not args.write:
        print(text)
        return 0
    return 0 if replace_block(args.readme, START, END, text) else 1


if __name__ == "__main__":
    sys.exit(main())
