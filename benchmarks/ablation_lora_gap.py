"""Why prompts trail LoRA on our ViT: VPT-deep on vpt:vit_tiny_cifar10, one factor at a time from the transfer
suite's VPT-deep cell, on MNIST (the largest gap to LoRA) and ELPV (a small one), each point one ``vpt sweep``.

    python benchmarks/ablation_lora_gap.py run --jobs 2                      # every point on mnist and elpv
    python benchmarks/ablation_lora_gap.py run --points tokens_50,head_mlp --tasks mnist --dry-run
    python benchmarks/ablation_lora_gap.py table --write                     # README block + PNG plot

The base point is the transfer suite's VPT-deep cell (benchmarks/transfer_sweep.py: 10 tokens at every block,
10 epochs, linear head, VPT's uniform init, the 7-lr grid of ``transfer_configs/spaces/head.yaml``, --pack 7,
3 seeds, test once); its record in ``results/transfer/sweep/e10/`` is used as is when it exists. Every other
point changes one factor and runs the same sweep (same space, packing, seeds, edge widening) through
transfer_sweep.py's machinery:

    tokens_1, tokens_50        prompt tokens per block (base 10)
    epochs_50                  epochs of every trial and final run (base 10)
    depth_last_half            prompts at the last 3 of 6 blocks only (base: all 6)
    head_mlp                   a 2-layer MLP head (GELU, hidden = width 192) instead of the linear one
    init_patch_embed           prompts start as the backbone's own patch tokens of noise images (base: VPT's
                               uniform init)
    init_data                  prompts start as patch tokens of training images, each block's from the tokens
                               entering it (SPT's random-sample init, Wang et al. 2024)

epochs_50 also runs LoRA r8 at 50 epochs (the suite's LoRA sweep, 50 epochs: ``lora.json`` beside the point's
record; ``--arms vpt_deep`` skips it), so the longer training is compared at equal epochs too.

Records: ``benchmarks/results/ablation_lora_gap/<point>/vit_tiny_cifar10/<task>/vpt_deep.json`` (the
transfer_sweep record format: command, versions, device, weights sha256, config, every trial, the final
seeds). ``table`` prints (or writes into benchmarks/README.md) test top-1 per point and task with the change
from base and the share of the base's gap to LoRA it closes, and draws ``ablation_lora_gap.png``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import transfer_sweep as ts  # noqa: E402  (benchmarks/ helpers: the sweep machinery this reuses)
from transfer import DATA_ROOT, RESULTS  # noqa: E402

SETUP, ARM = "vit_tiny_cifar10", "vpt_deep"
TASKS = ["mnist", "elpv"]
OUT = os.path.join(HERE, "results", "ablation_lora_gap")
SWEEPS_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "vpt", "ablation_sweeps")
BASE_RECORDS = os.path.join(RESULTS, "sweep", "e10")  # the transfer suite's records (scale e10)
PLOT = os.path.join(HERE, "results", "ablation_lora_gap.png")
README = os.path.join(HERE, "README.md")
START, END = "<!-- ablation-lora-gap:start -->", "<!-- ablation-lora-gap:end -->"
BASE_PROMPT = {"kind": "vpt_deep", "num_tokens": 10}
BASE_EPOCHS = 10
# point -> (what changes, --set overrides on top of the base VPT-deep arm, epochs)
POINTS: Dict[str, dict] = {
    "base": {"label": "base (10 tokens, all blocks, 10 ep, linear, uniform)", "set": {}, "epochs": BASE_EPOCHS},
    "tokens_1": {"label": "1 token", "set": {"model.prompt": {**BASE_PROMPT, "num_tokens": 1}}},
    "tokens_50": {"label": "50 tokens", "set": {"model.prompt": {**BASE_PROMPT, "num_tokens": 50}}},
    # the 50-epoch point also runs LoRA at 50 epochs: the gap at equal training, not against LoRA's 10 epochs
    "epochs_50": {"label": "50 epochs", "set": {}, "epochs": 50, "refs": {"lora": "LoRA r8, 50 epochs (reference)"}},
    "depth_last_half": {"label": "last 3 of 6 blocks", "set": {"model.prompt": {**BASE_PROMPT, "last_k": 3}}},
    "head_mlp": {"label": "MLP head", "set": {"model.head": {"kind": "mlp", "num_layers": 2}}},
    "init_patch_embed": {"label": "init from patch embeddings (noise images)",
                         "set": {"model.prompt": {**BASE_PROMPT, "init": "patch_embed"}}},
    "init_data": {"label": "init from training-image tokens (SPT)",
                  "set": {"model.prompt": {**BASE_PROMPT, "init": "data"}}},
}


def point_args(args, point: str) -> argparse.Namespace:
    """transfer_sweep's namespace for one point: its scale (= the point), epochs and extra overrides."""
    spec = POINTS[point]
    a = copy.copy(args)
    a.scale = point
    a.epochs = spec.get("epochs", BASE_EPOCHS) if args.epochs is None else args.epochs
    a.set = [f"{k}={json.dumps(v)}" for k, v in spec["set"].items()] + list(args.set)
    a.control = False
    return a


def parse_points(text: str) -> List[str]:
    points = list(POINTS) if text == "all" else [p for p in text.split(",") if p]
    for p in points:
        if p not in POINTS:
            raise SystemExit(f"error: unknown point {p!r}; available: {', '.join(POINTS)}")
    return points


def base_record(args, task: str) -> Optional[str]:
    """The transfer suite's VPT-deep record for ``task``, when the base point may use it."""
    path = ts.record_path(args.base_records, "", SETUP, task, ARM)
    return path if os.path.isfile(path) and not args.rerun_base else None


def record_file(args, point: str, task: str, arm: str = ARM) -> str:
    """The point's own record (of VPT-deep, or of a reference arm the point runs too); for the base point
    without one, the transfer suite's (unless --rerun-base)."""
    own = ts.record_path(args.out, point, SETUP, task, arm)
    if point == "base" and arm == ARM and not os.path.isfile(own) and base_record(args, task):
        return base_record(args, task)
    return own


def run(args) -> int:
    from concurrent.futures import ThreadPoolExecutor
    from transfer_data import read_manifest
    points, tasks = parse_points(args.points), [t for t in args.tasks.split(",") if t]
    arms = [a for a in args.arms.split(",") if a]
    known = {ARM, *(r for p in POINTS.values() for r in p.get("refs", {}))}
    if not arms or set(arms) - known:
        raise SystemExit(f"error: --arms {args.arms!r}: choose from {', '.join(sorted(known))}")
    for t in tasks:
        read_manifest(args.data_root, t)  # clear error if a task is not prepared
    sha = ts.weights_for(point_args(args, "base"), SETUP)[1]
    cells = [(p, t, a) for p in points for t in tasks for a in [ARM, *POINTS[p].get("refs", {})] if a in arms]
    todo = []
    for p, t, a in cells:  # load_record refuses a record made with other epochs / space
        if ts.load_record(record_file(args, p, t, a), point_args(args, p), sha, a) is None:
            todo.append((p, t, a))
    print(f"{len(cells)} points x tasks x arms ({args.seeds} seeds, {args.jobs} at a time): "
          f"{len(cells) - len(todo)} done, {len(todo)} to run{' (dry run)' if args.dry_run else ''}")
    for p, t, a in todo if args.dry_run else ():
        label = POINTS[p]["label"]
        print(f"  todo: {p} {t} {a} ({label if 'epoch' in label else f'{label}; {point_args(args, p).epochs} epochs'})")
    if args.dry_run or not todo:
        return 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(ts.run_cell, point_args(args, p), SETUP, t, a) for p, t, a in todo]
    failures = sum(f.result() is None for f in futures)
    print(f"done; {failures} failed sweeps (run the same command again to continue them)" if failures else "done")
    return 1 if failures else 0


# --- table and plot -------------------------------------------------------------------------------------------
def collect(args) -> Dict[str, Dict[str, dict]]:
    """point -> task -> record (points and tasks that have one)."""
    out: Dict[str, Dict[str, dict]] = {}
    for p in POINTS:
        for t in TASKS:
            path = record_file(args, p, t)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    out.setdefault(p, {})[t] = json.load(f)
    return out


def references(args) -> Dict[str, Dict[str, dict]]:
    """task -> {linear, lora, full} transfer-suite records (the lines the points are read against)."""
    out: Dict[str, Dict[str, dict]] = {}
    for t in TASKS:
        for arm in ("linear", "lora", "full"):
            path = ts.record_path(args.base_records, "", SETUP, t, arm)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    out.setdefault(t, {})[arm] = json.load(f)
    return out


def point_references(args) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """point -> task -> {arm: record} for the reference arms a point runs at its own settings (LoRA at 50
    epochs)."""
    out: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for p, spec in POINTS.items():
        for arm in spec.get("refs", {}):
            for t in TASKS:
                path = record_file(args, p, t, arm)
                if os.path.isfile(path):
                    with open(path, encoding="utf-8") as f:
                        out.setdefault(p, {}).setdefault(t, {})[arm] = json.load(f)
    return out


def _mean_sd(r: dict) -> str:
    return f"{r['test_top1_mean']:.1f} ± {r['test_top1_std']:.1f}"


def table(recs: Dict[str, Dict[str, dict]], refs: Dict[str, Dict[str, dict]],
          prefs: Optional[Dict[str, Dict[str, Dict[str, dict]]]] = None) -> str:
    tasks = [t for t in TASKS if any(t in r for r in recs.values())]
    if not tasks:
        return "No records yet: run `python benchmarks/ablation_lora_gap.py run`, then `table --write`."
    head = "| point | " + " | ".join(f"{t} top-1 (Δ base; gap to LoRA closed)" for t in tasks) + " |"
    lines = [head, "|---|" + "---|" * len(tasks)]
    for p, spec in POINTS.items():
        if p not in recs:
            continue
        cells = []
        for t in tasks:
            r, base = recs[p].get(t), recs.get("base", {}).get(t)
            if r is None:
                cells.append("–")
                continue
            cell = f"{_mean_sd(r)} <sub>lr {r['best']['params'].get('optim.lr')}</sub>"
            lora = refs.get(t, {}).get("lora")
            if base is not None and p != "base":
                d = r["test_top1_mean"] - base["test_top1_mean"]
                gap = (lora["test_top1_mean"] - base["test_top1_mean"]) if lora else None
                closed = f"; {100 * d / gap:.0f}%" if gap and gap > 0 else ""
                cell += f" ({d:+.1f}{closed})"
            cells.append(cell)
        lines.append(f"| {spec['label']} | " + " | ".join(cells) + " |")
    for arm, name in (("linear", "linear probe (reference)"), ("lora", "LoRA r8 (reference)"),
                      ("full", "full fine-tuning (reference)")):
        row = [_mean_sd(refs[t][arm]) if arm in refs.get(t, {}) else "–" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    for p, by_task in (prefs or {}).items():  # reference arms run at a point's settings (LoRA at 50 epochs)
        for arm, name in POINTS[p]["refs"].items():
            row = [f"{_mean_sd(by_task[t][arm])} <sub>lr {by_task[t][arm]['best']['params'].get('optim.lr')}</sub>"
                   if arm in by_task.get(t, {}) else "–" for t in tasks]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def sentences(recs: Dict[str, Dict[str, dict]], refs: Dict[str, Dict[str, dict]],
              prefs: Optional[Dict[str, Dict[str, Dict[str, dict]]]] = None) -> List[str]:
    """Per task: which points close the gap to LoRA beyond the seed spread, and which do not; and where a point
    ran LoRA at its own settings, the gap at equal settings."""
    out = []
    for t in TASKS:
        base = recs.get("base", {}).get(t)
        lora = refs.get(t, {}).get("lora")
        if base is None or lora is None or not any(t in recs[p] for p in recs if p != "base"):
            continue
        helps, not_ = [], []
        for p in POINTS:
            r = recs.get(p, {}).get(t)
            if p == "base" or r is None:
                continue
            d = r["test_top1_mean"] - base["test_top1_mean"]
            spread = max(r["test_top1_std"], base["test_top1_std"])
            (helps if d > spread else not_).append(f"{POINTS[p]['label']} ({d:+.1f})")
        gap = lora["test_top1_mean"] - base["test_top1_mean"]
        same = []
        for p, by_task in (prefs or {}).items():
            r, ref = recs.get(p, {}).get(t), by_task.get(t, {}).get("lora")
            if r is not None and ref is not None:
                d = r["test_top1_mean"] - ref["test_top1_mean"]
                verdict = "within" if abs(d) <= max(r["test_top1_std"], ref["test_top1_std"]) else "beyond"
                same.append(f" With {POINTS[p]['label']} both ways, VPT-deep {r['test_top1_mean']:.1f} against "
                            f"LoRA {ref['test_top1_mean']:.1f} ({d:+.1f}, {verdict} the seed spread).")
        out.append(f"- {t}: base VPT-deep trails LoRA by {gap:.1f} points; beyond the seed spread it gains with "
                   f"{', '.join(helps) or 'none of the changes'}; within the spread or worse: "
                   f"{', '.join(not_) or 'none'}." + "".join(same))
    return out


def plot(recs: Dict[str, Dict[str, dict]], refs: Dict[str, Dict[str, dict]], path: str,
         prefs: Optional[Dict[str, Dict[str, Dict[str, dict]]]] = None) -> Optional[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = [t for t in TASKS if any(t in r for r in recs.values())]
    if not tasks:
        return None
    points = [p for p in POINTS if p in recs]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        xs = [i for i, p in enumerate(points) if t in recs[p]]
        ys = [recs[points[i]][t]["test_top1_mean"] for i in xs]
        es = [recs[points[i]][t]["test_top1_std"] for i in xs]
        ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=3, color="C0", label="VPT-deep (mean ± std over seeds)")
        for arm, color, name in (("linear", "C7", "linear probe"), ("lora", "C1", "LoRA r8"),
                                 ("full", "C2", "full fine-tuning")):
            r = refs.get(t, {}).get(arm)
            if r is not None:
                ax.axhline(r["test_top1_mean"], color=color, ls="--", lw=1, label=f"{name}, {BASE_EPOCHS} epochs")
        for p, by_task in (prefs or {}).items():  # LoRA at a point's settings, at that point's x
            r = by_task.get(t, {}).get("lora")
            if r is not None and p in points:
                ax.errorbar([points.index(p) + 0.15], [r["test_top1_mean"]], yerr=[r["test_top1_std"]], fmt="s",
                            capsize=3, color="C1", label=POINTS[p]["refs"]["lora"].replace(" (reference)", ""))
        ax.set_xticks(range(len(points)))
        ax.set_xticklabels([POINTS[p]["label"].split(" (")[0] for p in points], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{t}: test top-1, one factor at a time")
        ax.set_ylabel("test top-1 (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(args) -> str:
    recs, refs, prefs = collect(args), references(args), point_references(args)
    text = table(recs, refs, prefs)
    said = sentences(recs, refs, prefs)
    return text + ("\n\n" + "\n".join(said) if said else "")


def table_cmd(args) -> int:
    from make_table import replace_block
    text = render(args)
    recs = collect(args)
    png = (plot(recs, references(args), args.plot, point_references(args))
           if any(p != "base" for p in recs) else None)  # not base alone
    if png:
        text += f"\n\n![VPT-deep ablation]({os.path.relpath(png, os.path.dirname(os.path.abspath(args.readme)))})"
    if not args.write:
        print(text)
        return 0
    return 0 if replace_block(args.readme, START, END, text) else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run the points' sweeps (resumable; finished points are skipped)")
    p.add_argument("--points", default="all", help=f"comma list or all: {', '.join(POINTS)}")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--arms", default=",".join([ARM, "lora"]),
                   help="vpt_deep (every point) and/or lora (run at the points that name it: epochs_50)")
    p.add_argument("--epochs", type=int, default=None, help="override every point's epochs (smoke runs only)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pack", type=int, default=7)
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument("--extend-edges", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="extra override for every sweep")
    p.add_argument("--rerun-base", action="store_true", help="run the base point anew instead of reusing the "
                                                             "transfer suite's VPT-deep record")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dry-run", action="store_true")
    q = sub.add_parser("table", help="the README table and the PNG plot from the records")
    q.add_argument("--write", action="store_true", help="write between the markers in benchmarks/README.md")
    q.add_argument("--readme", default=README)
    q.add_argument("--plot", default=PLOT)
    for x in (p, q):
        x.add_argument("--data-root", default=DATA_ROOT)
        x.add_argument("--out", default=OUT)
        x.add_argument("--base-records", default=BASE_RECORDS)
        x.add_argument("--sweeps-root", default=SWEEPS_ROOT)
        x.add_argument("--effnet-weights", default=ts.EFFNET_FILE)
    q.set_defaults(rerun_base=False)
    args = ap.parse_args(argv)
    args.data_root = os.path.expanduser(args.data_root)
    return run(args) if args.cmd == "run" else table_cmd(args)


if __name__ == "__main__":
    sys.exit(main())
