"""Before/after of ``speed.py`` across two versions of vpt: repeated runs of each, interleaved, and every ratio's
spread between repeats (the noise) next to its change.

    git worktree add /tmp/before 6855dc0 && git worktree add /tmp/after HEAD
    for rep in 1 2; do for side in before after; do
      (cd /tmp/$side && PYTHONPATH=/tmp/$side nice -n 5 python $PWD/benchmarks/speed.py \
         --model timm:vit_small_patch16_224 --batch 8 --dtype float32 --steps 4 --infer-steps 4 --out /tmp/$side_$rep.json)
    done; done                                     # before, after, before, after: one session, one script
    python benchmarks/speed_ab.py combine --label before --out benchmarks/results/speed_cpu_before_39.json /tmp/before_*.json
    python benchmarks/speed_ab.py combine --label after --out benchmarks/results/speed_cpu_after_39.json /tmp/after_*.json
    python benchmarks/speed_ab.py table benchmarks/results/speed_cpu_before_39.json benchmarks/results/speed_cpu_after_39.json

``combine`` keeps every run whole (its own command, versions with the vpt commit it imported, device, load
average) under ``repeats``. ``table`` prints, per ratio that ``speed.py`` reports (training img/s and peak memory
against full fine-tuning, inference img/s against the plain model, mixed tasks against one task and against
separate passes), each repeat's value, the change of the mean, and the spread: the largest relative difference
between two repeats of the same side. A change counts only beyond the noise used: the larger spread, and for a
side with one repeat the training ratios' spread between the first and second half of its timed steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Dict, List


def ratios(run: dict) -> Dict[str, float]:
    """Every ratio of one speed.py result, by a readable name."""
    out = {}
    for arm, r in (run.get("train") or {}).items():
        if arm != "full":
            out[f"train img/s {arm} / full"] = r["img_per_s_ratio_to_full"]
            out[f"peak memory {arm} / full"] = r["memory_ratio_to_full"]
    for arm, r in (run.get("inference") or {}).items():
        if arm != "plain":
            out[f"inference img/s {arm} / plain"] = r["ratio_to_plain"]
    mt = run.get("multitask")
    if mt:
        out[f"{mt['tasks']} tasks mixed / one task"] = mt["mixed_over_single_throughput"]
        out[f"{mt['tasks']} tasks mixed / separate passes"] = mt["mixed_over_separate_throughput"]
    return out


def half_ratios(run: dict) -> List[Dict[str, float]]:
    """The training img/s ratios of one run recomputed from the first and from the second half of its timed
    steps (medians): how far a ratio moves within one run, where a side has only one repeat."""
    train = run.get("train") or {}
    if "full" not in train or "all_step_ms" not in train["full"]:
        return []
    halves = []
    for part in (0, 1):
        def med(arm):
            steps = train[arm]["all_step_ms"]
            n = len(steps) // 2
            return statistics.median(steps[:n] if part == 0 else steps[n:])
        halves.append({f"train img/s {arm} / full": med("full") / med(arm) for arm in train if arm != "full"})
    return halves


def spread(values: List[float]) -> float:
    """Largest relative difference between two repeats (0 with one repeat)."""
    return (max(values) - min(values)) / statistics.mean(values) if len(values) > 1 else 0.0


def table(before: dict, after: dict) -> str:
    b = [ratios(r) for r in before["repeats"]]
    a = [ratios(r) for r in after["repeats"]]
    rows = ["| ratio | before (repeats) | after (repeats) | after / before (means) | spread before | spread after |"
            " noise used | beyond noise? |", "|---|---|---|---|---|---|---|---|"]
    bh = [h for r in before["repeats"] for h in half_ratios(r)] if len(b) == 1 else []
    ah = [h for r in after["repeats"] for h in half_ratios(r)] if len(a) == 1 else []
    for name in b[0]:
        bv, av = [r[name] for r in b], [r[name] for r in a if name in r]
        change = statistics.mean(av) / statistics.mean(bv)
        noise = max(spread(bv), spread(av))
        within = [spread([h[name] for h in hs]) for hs in (bh, ah) if hs and name in hs[0]]
        if within:  # one repeat on a side: the halves of its steps stand in for repeats
            noise = max([noise] + within)
        lower_better = name.startswith("peak memory")
        if abs(change - 1) <= max(noise, 1e-3):
            verdict = "no"
        elif noise == 0 and min(len(bv), len(av)) == 1 and not lower_better:  # one repeat, no step times
            verdict = "unknown (one repeat)"
        else:
            verdict = "better" if (change < 1) == lower_better else "worse"
        rows.append(f"| {name} | {' / '.join(f'{v:.3f}' for v in bv)} | {' / '.join(f'{v:.3f}' for v in av)} | "
                    f"{change:.3f} | {spread(bv):.1%} | {spread(av):.1%} | {noise:.1%} | {verdict} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("combine", help="several speed.py results of one side into one file")
    c.add_argument("runs", nargs="+")
    c.add_argument("--label", required=True)
    c.add_argument("--out", required=True)
    t = sub.add_parser("table", help="the markdown table of two combined files")
    t.add_argument("before")
    t.add_argument("after")
    args = ap.parse_args(argv)
    if args.cmd == "combine":
        runs = [json.load(open(p)) for p in args.runs]
        first = runs[0]
        res = {"command": " ".join(["python"] + sys.argv), "label": args.label,
               "commit": first.get("versions", {}).get("vpt_commit"), "versions": first.get("versions"),
               "device": first.get("device"), "repeats": runs}
        from vpt.io import atomic_write_text
        atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
        return 0
    print(table(json.load(open(args.before)), json.load(open(args.after))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
