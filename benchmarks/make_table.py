"""Markdown tables from the transfer benchmark's JSON results (benchmarks/results/transfer/**.json).

    python benchmarks/make_table.py                 # print
    python benchmarks/make_table.py --write         # replace the block between the markers in benchmarks/README.md
    python benchmarks/make_table.py --scale full

One table per (scale, tag): tasks x arms, test top-1 mean ± std over seeds at the lr chosen on val (the
grid seed's best val top-1, ties to the smaller lr: the same rule transfer.py runs with), then the
trainable-parameter share and the mean training time per run (seconds in training epochs, not evaluation).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from collections import defaultdict
from typing import Dict, List

from transfer import ARMS, RESULTS, TASKS, select_lr  # a sibling script (light: no torch at module level)

HERE = os.path.dirname(os.path.abspath(__file__))

README = os.path.join(HERE, "README.md")
START, END = "<!-- transfer-table:start -->", "<!-- transfer-table:end -->"


def load(root: str) -> List[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("benchmark") == "transfer":
            out.append(rec)
    return out


def _mean_std(values: List[float]) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values)
    return f"{m:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{m:.1f}"


def final_runs(records: List[dict]) -> Dict[tuple, List[dict]]:
    """(task, arm) -> the runs at the lr chosen on val (every seed), sorted by seed."""
    by_cell: Dict[tuple, List[dict]] = defaultdict(list)
    for r in records:
        by_cell[(r["task"], r["arm"])].append(r)
    final: Dict[tuple, List[dict]] = {}
    for key, recs in by_cell.items():
        lr = select_lr(recs)
        final[key] = sorted((r for r in recs if r["lr"] == lr), key=lambda r: r["seed"])
    return final


def table(records: List[dict]) -> str:
    final = final_runs(records)
    tasks = [t for t in TASKS if any(k[0] == t for k in final)]
    arms = [a for a in ARMS if any(k[1] == a for k in final)]
    seeds = sorted({len(v) for v in final.values()})
    lines = ["| task | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for t in tasks:
        cells = []
        for a in arms:
            recs = final.get((t, a), [])
            cell = _mean_std([r["test_top1"] for r in recs])
            if recs:
                cell += f" <sub>lr {recs[0]['lr']:g}{'' if len(recs) == max(seeds) else f', n={len(recs)}'}</sub>"
            cells.append(cell)
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if len(tasks) > 1:  # mean over tasks of the per-task means, only where an arm has every task
        means = []
        for a in arms:
            per_task = [statistics.fmean(r["test_top1"] for r in final[(t, a)]) for t in tasks if final.get((t, a))]
            means.append(f"{statistics.fmean(per_task):.1f}" if len(per_task) == len(tasks) else "–")
        lines.append("| **mean** | " + " | ".join(means) + " |")
    share = [statistics.fmean([r["trainable_percent"] for k, v in final.items() if k[1] == a for r in v] or [0])
             for a in arms]
    secs = [statistics.fmean([r["train_seconds"] for k, v in final.items() if k[1] == a for r in v] or [0])
            for a in arms]
    lines.append("| trainable % | " + " | ".join(f"{s:.3g}" for s in share) + " |")
    lines.append("| train s / run (mean over tasks) | " + " | ".join(f"{s:.0f}" for s in secs) + " |")
    return "\n".join(lines)


PROMPT_ARMS = ("vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad")


def gain_table(main: List[dict], control: List[dict]) -> str:
    """Each prompt arm minus the linear probe (mean test top-1 over seeds), per task, on the pretrained
    backbone and on its random-init control: a prompt gain that needs pretrained features shows only in
    the first number."""
    fm, fc = final_runs(main), final_runs(control)

    def gain(final, t, a):
        if not final.get((t, a)) or not final.get((t, "linear")):
            return None
        return (statistics.fmean(r["test_top1"] for r in final[(t, a)])
                - statistics.fmean(r["test_top1"] for r in final[(t, "linear")]))

    tasks = [t for t in TASKS if (t, "linear") in fm and (t, "linear") in fc]
    arms = [a for a in PROMPT_ARMS if any((t, a) in fm and (t, a) in fc for t in tasks)]
    if not tasks or not arms:
        return ""
    lines = ["| task | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    cols = {a: ([], []) for a in arms}
    for t in tasks:
        cells = []
        for a in arms:
            g, c = gain(fm, t, a), gain(fc, t, a)
            if g is None or c is None:
                cells.append("–")
                continue
            cols[a][0].append(g)
            cols[a][1].append(c)
            cells.append(f"{g:+.1f} / {c:+.1f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if len(tasks) > 1:
        lines.append("| **mean** | " + " | ".join(
            f"{statistics.fmean(cols[a][0]):+.1f} / {statistics.fmean(cols[a][1]):+.1f}"
            if len(cols[a][0]) == len(tasks) else "–" for a in arms) + " |")
    return "\n".join(lines)


def stale_shipped(name: str, shas: set) -> str:
    """A note when results of a shipped ``vpt:NAME`` backbone were made with weights it no longer ships."""
    if not name.startswith("vpt:") or len(shas) != 1 or None in shas:
        return ""
    try:
        from vpt.weights import SHIPPED
    except ImportError:
        return ""
    entry = SHIPPED.get(name[4:])
    if entry is None or entry["sha256"] in shas:
        return ""
    return (f"made with earlier weights of {name} (sha256 {next(iter(shas))[:12]}); it now ships sha256 "
            f"{entry['sha256'][:12]} (CIFAR-10 test top-1 {entry['cifar10_test_top1']:.2f} %): rerun these "
            f"to measure the shipped model")


def render(records: List[dict], scale: str = None) -> str:
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for r in records:
        if scale is None or r["scale"] == scale:
            groups[(r["scale"], r["tag"])].append(r)
    parts, smoke = [], []
    # measured scales first; smoke runs (pipeline checks, 1-5 epochs) fold away below them
    for (sc, tag), recs in sorted(groups.items(), key=lambda kv: (kv[0][0] == "smoke", kv[0])):
        r0 = recs[0]
        shas = {r.get("backbone_weights_sha256") for r in recs}
        n_seeds = len({r["seed"] for r in recs})
        head = (f"**{tag}** (scale: {sc}; {r0['epochs']} epochs; seeds: {n_seeds}; device: {r0['device']}; "
                f"backbone: {r0['config']['model']['backbone']['name']}"
                f"{', random init (control)' if r0.get('control') else ''}"
                f"{f', weights sha256 {next(iter(shas))[:12]}' if len(shas) == 1 and None not in shas else ''})")
        if len(shas) > 1:
            head += (f"\n\n> warning: these runs used {len(shas)} different backbone weights files; "
                     f"rerun them or split the tag")
        stale = stale_shipped(r0["config"]["model"]["backbone"]["name"], shas)
        if stale:
            head += f"\n\n> {stale}"
        block = head + "\n\n" + table(recs)
        if tag.endswith("-control") and (sc, tag[:-len("-control")]) in groups:
            gains = gain_table(groups[(sc, tag[:-len("-control")])], recs)
            if gains:
                block += (f"\n\n**{tag[:-len('-control')]}: prompt minus linear probe** (test top-1 points, "
                          f"pretrained / random-init control)\n\n" + gains)
        (smoke if sc == "smoke" else parts).append(block)
    if smoke:
        parts.append("<details><summary>smoke runs (pipeline checks, not results)</summary>\n\n"
                     + "\n\n".join(smoke) + "\n\n</details>")
    note = ("Test top-1 (%) mean ± std over seeds at the lr chosen on val; trainable % includes the head; "
            "train s = seconds in training epochs per run. Generated by benchmarks/make_table.py from "
            "benchmarks/results/transfer/.")
    return note + "\n\n" + "\n\n".join(parts) if parts else "(no transfer results yet)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=RESULTS)
    ap.add_argument("--scale", help="only this scale (smoke | full)")
    ap.add_argument("--write", action="store_true", help=f"write between the markers in {README}")
    args = ap.parse_args(argv)
    text = render(load(args.root), args.scale)
    if not args.write:
        print(text)
        return 0
    if not os.path.isfile(README):
        print(text)
        print(f"\nnote: {README} does not exist; add it with the lines {START} and {END}, then rerun --write",
              file=sys.stderr)
        return 1
    with open(README, encoding="utf-8") as f:
        doc = f.read()
    if START not in doc or END not in doc:
        print(text)
        print(f"\nnote: {README} has no {START} ... {END} block; add one, then rerun --write", file=sys.stderr)
        return 1
    head, rest = doc.split(START, 1)
    doc = head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
    with open(README, "w", encoding="utf-8") as f:
        f.write(doc)
    print(f"wrote the transfer table into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
