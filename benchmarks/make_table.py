"""Markdown tables from the transfer benchmark's JSON results (benchmarks/results/transfer/**.json).

    python benchmarks/make_table.py                 # print
    python benchmarks/make_table.py --write         # replace the generated blocks (between the markers) of
                                                    # benchmarks/README.md and docs/results.md
    python benchmarks/make_table.py --scale full

One table per (scale, tag): tasks x arms, test top-1 mean ± std over seeds at the lr chosen on val (the
grid seed's best val top-1, ties to the smaller lr: the same rule transfer.py runs with), then the
trainable-parameter share and the mean training time per run (seconds in training epochs, not evaluation).

The sweep records (benchmarks/transfer_sweep.py: one ``vpt sweep`` per (task, arm), results/transfer/sweep/)
get their own block: the after-tuning table, before -> after against the transfer.py table of the same
scale and tag, each prompt arm's gap to the linear probe, LoRA and full fine-tuning, and plain sentences
on where prompts lose. A setup whose sweeps have not all finished is marked partial.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
from collections import Counter, defaultdict
from typing import Dict, List

from transfer import ARMS, RESULTS, TASKS, select_lr  # sibling scripts (light: no torch at module level)
from transfer_sweep import record_edges

HERE = os.path.dirname(os.path.abspath(__file__))

README = os.path.join(HERE, "README.md")  # the full tables: every setup, scale and tag
RESULTS_DOC = os.path.join(os.path.dirname(HERE), "docs", "results.md")  # the main setup's summary
START, END = "<!-- transfer-table:start -->", "<!-- transfer-table:end -->"
SWEEP_START, SWEEP_END = "<!-- transfer-sweep-table:start -->", "<!-- transfer-sweep-table:end -->"
SUMMARY_START, SUMMARY_END = "<!-- transfer-summary:start -->", "<!-- transfer-summary:end -->"


def load(root: str) -> List[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("benchmark") == "transfer":
            out.append(rec)
    return out


def load_sweeps(root: str) -> List[dict]:
    """The transfer_sweep.py records (one per (scale, tag, task, arm)) under ``root``."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("benchmark") == "transfer_sweep":
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


# --- the sweep records (transfer_sweep.py) ---------------------------------------------------------------
ARM_NAMES = {"linear": "linear probe", "full": "full fine-tuning", "lora": "LoRA", "vpt_shallow": "VPT-shallow",
             "vpt_deep": "VPT-deep", "vpt_prefix": "prefix", "pixel_pad": "pixel pad",
             # the PEFT baselines (issue #35; transfer.py METHOD_ARMS)
             "adapter": "Adapter", "adaptformer": "AdaptFormer", "ssf": "SSF", "bitfit": "BitFit", "fact": "FacT-TK",
             "partial1": "partial (last block)", "peft_loha": "peft LoHa", "convpass": "Convpass",
             "repadapter": "RepAdapter", "e2vpt": "E2VPT"}
BASELINES = ("linear", "lora", "full")


def _lr(params: dict) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in params.values())


def _setup_arms(rec: dict) -> List[str]:
    from transfer import SETUPS
    setup = SETUPS.get(rec.get("setup"), {})
    return list(setup.get("control_arms" if rec.get("control") else "arms", ARMS))


def _order(cells: Dict[tuple, dict]) -> tuple:
    tasks = [t for t in TASKS if any(k[0] == t for k in cells)]
    arms = [a for a in ARMS if any(k[1] == a for k in cells)]
    return tasks, arms


def _runner_up(r: dict) -> str:
    """'; val 75.5 vs 73.0 at lr 0.01, its neighbour': an edge lr's val against the nearest lr searched inside
    the space, so a reader sees by how much the edge won (one val image is 100 / val size points)."""
    lr = r["best"]["params"].get("optim.lr")
    others = [t for t in r["trials"] if t["state"] == "COMPLETE" and t.get("value") is not None
              and t["params"].get("optim.lr") not in (None, lr)]
    if lr is None or not others:
        return ""
    nxt = min(others, key=lambda t: abs(math.log(t["params"]["optim.lr"] / lr)))
    return f"; val {r['best']['val']:g} vs {nxt['value']:g} at lr {_lr(nxt['params'])}, its neighbour"


def _in_order(cells: Dict[tuple, dict]) -> List[tuple]:
    """((task, arm), record) pairs in the tables' task and arm order."""
    return sorted(cells.items(), key=lambda kv: (TASKS.index(kv[0][0]), list(ARMS).index(kv[0][1])))


def _added_lrs(r: dict) -> List[float]:
    """The lrs that --extend-edges added to a record's grid, in the order added."""
    return [v for step in r["widened"] for v in step["added"].get("optim.lr", [])]


def main_device(cells: Dict[tuple, dict]) -> str:
    """The device most of a setup's sweeps ran on (ties: the name first in sort order)."""
    counts = Counter(r["device"] for r in cells.values())
    return min(counts, key=lambda d: (-counts[d], d))


def device_note(cells: Dict[tuple, dict]) -> str:
    """'cpu (...)' when every sweep ran there; else the main device with its count, then each other device
    with the (task, arm) cells it ran, which the tables mark with †."""
    main = main_device(cells)
    others: Dict[str, List[str]] = defaultdict(list)
    for (t, a), r in _in_order(cells):
        if r["device"] != main:
            others[r["device"]].append(f"{t} {a}")
    if not others:
        return main
    return (f"{main} for {sum(r['device'] == main for r in cells.values())} sweeps; "
            + "; ".join(f"{d} for {', '.join(c)} (marked †)" for d, c in sorted(others.items())))


def sweep_table(cells: Dict[tuple, dict]) -> str:
    """(task, arm) -> record: test top-1 mean ± std over the final seeds, the lr the sweep chose (marked
    'edge' when it is the space's edge, † when the sweep ran on another device than most of the table), the
    mean over tasks where an arm has every task of the table, and training seconds per device."""
    main = main_device(cells)
    tasks, arms = _order(cells)
    lines = ["| task | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for t in tasks:
        row = []
        for a in arms:
            r = cells.get((t, a))
            if r is None:
                row.append("–")
                continue
            std = f" ± {r['test_top1_std']:.1f}" if r["test_n"] > 1 else ""
            edge = ", **edge**" if record_edges(r) else ""
            other = " †" if r["device"] != main else ""
            row.append(f"{r['test_top1_mean']:.1f}{std} <sub>lr {_lr(r['best']['params'])}{edge}{other}</sub>")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    if len(tasks) > 1:
        lines.append("| **mean** | " + " | ".join(
            f"{statistics.fmean(cells[(t, a)]['test_top1_mean'] for t in tasks):.1f}"
            if all((t, a) in cells for t in tasks) else "–" for a in arms) + " |")
    share = [statistics.fmean(r["trainable_percent"] for k, r in cells.items() if k[1] == a) for a in arms]
    lines.append("| trainable % | " + " | ".join(f"{x:.3g}" for x in share) + " |")
    devices = sorted({r["device"] for r in cells.values()}, key=lambda d: (d != main, d))
    for dev in devices:  # seconds are comparable within one device only: one row each
        secs = [[f["train_seconds"] for k, r in cells.items() if k[1] == a and r["device"] == dev
                 for f in r["final_runs"]] for a in arms]
        label = "train s / final run" + (f" ({dev}, †)" if dev != main else "")
        lines.append(f"| {label} | " + " | ".join(f"{statistics.fmean(x):.0f}" if x else "–" for x in secs) + " |")
    return "\n".join(lines)


def before_after_table(old: List[dict], cells: Dict[tuple, dict]) -> str:
    """transfer.py's table (3-lr grid, lr chosen on seed 0's val) -> the sweep's, for the (task, arm) pairs
    both have: test top-1 means, the difference and the lrs chosen."""
    before = {k: v for k, v in final_runs(old).items() if v}
    pairs = {k: r for k, r in cells.items() if k in before}
    if not pairs:
        return ""
    tasks, arms = _order(pairs)
    lines = ["| task | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    deltas: Dict[str, List[float]] = defaultdict(list)
    for t in tasks:
        row = []
        for a in arms:
            if (t, a) not in pairs:
                row.append("–")
                continue
            b = statistics.fmean(r["test_top1"] for r in before[(t, a)])
            r = pairs[(t, a)]
            deltas[a].append(r["test_top1_mean"] - b)
            row.append(f"{b:.1f} → {r['test_top1_mean']:.1f} ({r['test_top1_mean'] - b:+.1f}) "
                       f"<sub>lr {before[(t, a)][0]['lr']:g} → {_lr(r['best']['params'])}</sub>")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    if len(tasks) > 1:
        lines.append("| **mean change** | " + " | ".join(
            f"{statistics.fmean(deltas[a]):+.1f} (n={len(deltas[a])})" for a in arms) + " |")
    return "\n".join(lines)


def gap_table(cells: Dict[tuple, dict]) -> str:
    """Each prompt arm minus the linear probe / LoRA / full fine-tuning, per task (test top-1 points)."""
    tasks, _ = _order(cells)
    arms = [a for a in PROMPT_ARMS if any((t, a) in cells for t in tasks)]
    base = [b for b in BASELINES if any((t, b) in cells for t in tasks)]
    if not arms or not base:
        return ""
    lines = ["| task | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for t in tasks:
        row = []
        for a in arms:
            if (t, a) not in cells:
                row.append("–")
                continue
            m = cells[(t, a)]["test_top1_mean"]
            row.append(" / ".join(f"{m - cells[(t, b)]['test_top1_mean']:+.1f}" if (t, b) in cells else "–"
                                  for b in base))
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    return ("cells: prompt arm minus " + " / ".join(ARM_NAMES[b] for b in base) + " (test top-1 points; "
            "negative: the prompt loses)\n\n" + "\n".join(lines))


def _span(lo: float, hi: float, fmt: str = "+.1f", sep: str = " to ") -> str:
    """'lo to hi', or one number when both print the same."""
    a, b = format(lo, fmt), format(hi, fmt)
    return a if a == b else f"{a}{sep}{b}"


def methods_table(cells: Dict[tuple, dict]) -> str:
    """The PEFT baselines beside the prompts, on the tasks where a method arm ran: each arm's test top-1 and its
    difference to the best prompt arm of that task (positive: the method beats every prompt arm)."""
    from transfer import METHOD_ARMS
    tasks = [t for t in TASKS if any((t, m) in cells for m in METHOD_ARMS)]
    methods = [m for m in METHOD_ARMS if any((t, m) in cells for t in tasks)]
    if not methods:
        return ""
    lines = ["| task | best prompt arm | " + " | ".join(ARM_NAMES.get(m, m) for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for t in tasks:
        prompts = {a: cells[(t, a)]["test_top1_mean"] for a in PROMPT_ARMS if (t, a) in cells}
        best = max(prompts, key=prompts.get) if prompts else None
        row = [f"{ARM_NAMES[best]} {prompts[best]:.1f}" if best else "–"]
        for m in methods:
            if (t, m) not in cells:
                row.append("–")
                continue
            v = cells[(t, m)]["test_top1_mean"]
            row.append(f"{v:.1f}" + (f" ({v - prompts[best]:+.1f})" if best else ""))
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    return ("cells: test top-1 mean over the final seeds (the method minus the task's best prompt arm; positive: "
            "the method wins)\n\n" + "\n".join(lines))


def lose_sentences(cells: Dict[tuple, dict], planned=PROMPT_ARMS) -> List[str]:
    """Plain words per task: which baselines every prompt arm loses to, and by how much. ``planned``: the
    setup's prompt arms (a CNN has pixel prompts only), for the note on the ones not finished yet."""
    tasks, _ = _order(cells)
    out = []
    for t in tasks:
        arms = [a for a in PROMPT_ARMS if (t, a) in cells]
        if not arms:
            continue
        parts = []
        for b in BASELINES:
            if (t, b) not in cells:
                continue
            ref = cells[(t, b)]["test_top1_mean"]
            gaps = {a: cells[(t, a)]["test_top1_mean"] - ref for a in arms}
            losers = {a: g for a, g in gaps.items() if g < 0}
            if len(losers) == len(arms):
                lo, hi = min(-g for g in gaps.values()), max(-g for g in gaps.values())
                by = _span(lo, hi, ".1f", "-")
                who = "every prompt arm loses" if len(arms) > 1 else f"{ARM_NAMES[arms[0]]} loses"
                parts.append(f"{who} to {ARM_NAMES[b]} ({ref:.1f}), by {by} points")
            elif losers:
                winners = [ARM_NAMES[a] for a in arms if a not in losers]
                parts.append(f"{', '.join(f'{ARM_NAMES[a]} ({g:+.1f})' for a, g in losers.items())} "
                             f"{'lose' if len(losers) > 1 else 'loses'} to {ARM_NAMES[b]} ({ref:.1f}); "
                             f"{', '.join(winners)} {'do' if len(winners) > 1 else 'does'} not")
            else:
                who = "no prompt arm loses" if len(arms) > 1 else f"{ARM_NAMES[arms[0]]} does not lose"
                parts.append(f"{who} to {ARM_NAMES[b]} ({ref:.1f}; {_span(min(gaps.values()), max(gaps.values()))})")
        if parts:
            missing = [a for a in PROMPT_ARMS if a in planned and (t, a) not in cells]
            note = f" (prompt arms not finished: {', '.join(missing)})" if missing else ""
            out.append(f"- **{t}**{note}: " + "; ".join(parts) + ".")
    return out


def render_sweeps(sweeps: List[dict], old: List[dict]) -> str:
    groups: Dict[tuple, Dict[tuple, dict]] = defaultdict(dict)
    for r in sweeps:
        groups[(r["scale"], r["tag"])][(r["task"], r["arm"])] = r
    parts = []
    for (sc, tag), cells in sorted(groups.items()):
        r0 = next(iter(cells.values()))
        expected = len(TASKS) * len(_setup_arms(r0))
        done = len([k for k in cells if k[1] in _setup_arms(r0)])  # the PEFT baselines run when named
        spaces = sorted({f"{r['arm']}: {r['space_file'].rsplit('/', 1)[-1]}" for r in cells.values()})
        budgets = sorted({r["budget"] for r in cells.values()})
        shas = {r.get("backbone_weights_sha256") for r in cells.values()}
        head = (f"**{tag}, tuned with `vpt sweep`** (scale: {sc}; {r0['epochs']} epochs; grid of "
                f"{'/'.join(map(str, budgets))} lrs per arm, {r0['sampler']} sampler, {r0['pruner']} pruner; final "
                f"seeds: {r0['test_n']}; device: {device_note(cells)}; backbone: {r0['config']['model']['backbone']['name']}"
                f"{f', weights sha256 {next(iter(shas))[:12]}' if len(shas) == 1 and None not in shas else ''})")
        if done < expected:
            head += (f"\n\n> **partial**: {done} of {expected} (task, arm) sweeps finished; `–` = not run yet. "
                     f"Means over tasks only where an arm has every task of the table.")
        block = head + "\n\n" + sweep_table(cells)
        edges = [f"{t} {a} (lr {_lr(r['best']['params'])}, {'/'.join(record_edges(r).values())} edge{_runner_up(r)})"
                 for (t, a), r in _in_order(cells) if record_edges(r)]
        block += ("\n\nOptimum on the edge of the space (the best lr may lie beyond it): " + "; ".join(edges) + "."
                  if edges else "\n\nNo optimum lies on the edge of its space.")
        widened = [f"{t} {a} (lr + {', '.join(_lr({'optim.lr': v}) for v in _added_lrs(r))}: {len(r['trials'])} "
                   f"trials, best lr {_lr(r['best']['params'])})" for (t, a), r in _in_order(cells) if r.get("widened")]
        if widened:
            block += ("\n\nWidened past an edge (`--extend-edges`: the next lr at the grid's spacing, searched "
                      "while the best lies on the edge): " + "; ".join(widened) + ".")
        same = [r for r in old if r["scale"] == sc and r["tag"] == tag]
        ba = before_after_table(same, cells)
        if ba:
            block += (f"\n\n**{tag}: before → after tuning** (test top-1 mean over 3 seeds; before: transfer.py, "
                      f"3-lr grid, lr chosen on seed 0's val; after: the sweep above)\n\n" + ba)
        gaps = gap_table(cells)
        if gaps:
            block += f"\n\n**{tag}, after tuning: prompts against the baselines**; " + gaps
        methods = methods_table(cells)
        if methods:
            block += f"\n\n**{tag}, after tuning: the PEFT baselines beside the prompts**; " + methods
        sentences = lose_sentences(cells, [a for a in PROMPT_ARMS if a in _setup_arms(r0)])
        if sentences:
            block += f"\n\n**{tag}, after tuning: where prompts lose**\n\n" + "\n".join(sentences)
        parts.append(block)
    note = ("Generated by benchmarks/make_table.py from benchmarks/results/transfer/sweep/ (benchmarks/transfer_sweep.py). "
            "Test top-1 (%) mean ± std over the final seeds of the lr each sweep chose on val; `edge`: that lr is the "
            "edge of the arm's space; † = the sweep ran on another device than most of its table (the heading names "
            "it); train s = seconds in training epochs per final run, one row per device; on the CPU, shared with "
            "other jobs at the lowest priority (1 thread): not comparable with the seconds of the transfer.py table.")
    return note + "\n\n" + "\n\n".join(parts) if parts else "(no transfer sweep results yet)"


def replace_block(path: str, start: str, end: str, text: str) -> bool:
    """Write ``text`` between the markers of ``path``; False (with a note) when the file or markers are missing."""
    if not os.path.isfile(path):
        print(f"note: {path} does not exist; add the lines {start} and {end}, then rerun --write", file=sys.stderr)
        return False
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    if start not in doc or end not in doc:
        print(f"note: {path} has no {start} ... {end} block; add one, then rerun --write", file=sys.stderr)
        return False
    head, rest = doc.split(start, 1)
    doc = head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(path + ".tmp", path)
    print(f"wrote {start.split(':')[0][5:]} into {path}")
    return True


def summary(sweeps: List[dict], old: List[dict], tag: str = "vit_tiny_cifar10") -> str:
    """docs/results.md's short form: the main setup's after-tuning table, before -> after and the sentences."""
    mine = [r for r in sweeps if r["tag"] == tag]
    if not mine:
        return "(no transfer sweep results yet)"
    text = render_sweeps(mine, old)
    return text.split("\n\n", 1)[1]  # without the generic note (the page's own paragraph introduces it)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=RESULTS)
    ap.add_argument("--scale", help="only this scale (smoke | full)")
    ap.add_argument("--write", action="store_true",
                    help="write between the markers in benchmarks/README.md (every table) and docs/results.md "
                         "(the summary of the main setup)")
    args = ap.parse_args(argv)
    old = load(args.root)
    sweeps = [r for r in load_sweeps(args.root) if args.scale is None or r["scale"] == args.scale]
    text = render(old, args.scale)
    sweep_text = render_sweeps(sweeps, old)
    if not args.write:
        print(text + "\n\n" + sweep_text)
        return 0
    ok = replace_block(README, START, END, text)
    ok = replace_block(README, SWEEP_START, SWEEP_END, sweep_text) and ok
    ok = replace_block(RESULTS_DOC, SUMMARY_START, SUMMARY_END, summary(sweeps, old)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
