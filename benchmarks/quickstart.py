"""The embedded default: prompt-tune the shipped ViT on a real task and compare with a linear probe and a
random-init control, through the normal ``vpt train`` path. Offline; a few minutes on 2 CPU cores.

    python benchmarks/quickstart.py                     # bccd_cells: blood-cell type from BCCD box crops
    python benchmarks/quickstart.py --task mnist --epochs 10

Four ``vpt train`` runs on the same data, recipe, lr and seed, all on the embedded default recipe (no -c:
``vpt_deep_vit_tiny_cifar10``, the same run as the README's first ``vpt train --data DIR``): VPT-deep on
``vpt:vit_tiny_cifar10`` (CIFAR-10-pretrained), the linear probe (the same recipe with
``--set model.prompt=null``), and the same two on a random-init copy of that ViT (the control: what prompts
achieve without pretrained features). The best epoch is picked on val; test top-1 is read once. Prints a
table and writes ``<out>/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ARMS = {  # name -> extra `vpt train` arguments (on the embedded default recipe: VPT-deep, 10 tokens)
    "vpt_deep": [],
    "linear": ["--set", "model.prompt=null"],
}
BACKBONES = {  # name -> extra `vpt train` arguments (the default recipe's backbone is vpt:vit_tiny_cifar10)
    "pretrained": [],
    "random-init control": ["--set", "model.backbone.pretrained=false", "--set", "model.backbone.init_seed=0"],
}


def train_commands(data: str, out_root: str, epochs: int, lr, seed: int):
    """(backbone, arm, run folder, `vpt train` argv) of the four runs; none passes -c: the default recipe."""
    runs = []
    for bb, bb_args in BACKBONES.items():
        for arm, arm_args in ARMS.items():
            out = os.path.join(out_root, f"{arm}-{'control' if bb != 'pretrained' else 'pretrained'}")
            cmd = ["train", "--data", data, "--output", out, "--overwrite", "--epochs", str(epochs),
                   *(["--lr", repr(lr)] if lr is not None else []), "--seed", str(seed), *bb_args, *arm_args]
            runs.append((bb, arm, out, cmd))
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--task", default="mnist", help="a task of benchmarks/transfer_data.py")
    ap.add_argument("--data-root", default=os.path.join("~", ".cache", "vpt", "datasets"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=None,
                    help="AdamW lr, the same for every run (default: the default recipe's, 0.03)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/quickstart")
    args = ap.parse_args(argv)

    import transfer_data  # benchmarks/transfer_data.py (this script's folder is on sys.path)
    root = os.path.expanduser(args.data_root)
    if args.task not in transfer_data.TASKS:
        ap.error(f"unknown --task {args.task!r}; available: {', '.join(transfer_data.TASKS)}")
    if not os.path.isfile(os.path.join(root, args.task, "manifest.json")):
        print(f"preparing {args.task} under {root} ...", flush=True)
        try:
            transfer_data.TASKS[args.task](root)
        except transfer_data.DataMissing as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    manifest = transfer_data.read_manifest(root, args.task)

    from vpt.cli import main as vpt_main
    rows = []
    for bb, arm, out, cmd in train_commands(os.path.join(root, args.task), os.path.join(args.out, args.task),
                                            args.epochs, args.lr, args.seed):
        print(f"\n$ vpt {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        if vpt_main(cmd) != 0:
            print(f"error: the {arm} run on the {bb} backbone failed; see {out}/train.log", file=sys.stderr)
            return 1
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            res = json.load(f)
        lr = res["config"]["optim"]["lr"]
        rows.append({"backbone": bb, "arm": arm, "lr": lr, "val_top1": res["val"]["top1"],
                     "test_top1": res["test"]["top1"],
                     "best_epoch": res.get("best_epoch"), "trainable_params": res.get("trainable_params"),
                     "wall_seconds": round(time.perf_counter() - start, 1), "run": out,
                     "command": "vpt " + " ".join(cmd)})

    by = {(r["backbone"], r["arm"]): r for r in rows}
    args.lr = rows[0]["lr"]  # what ran (the recipe's unless --lr)
    lines = [f"\n{args.task}: {manifest['totals']} images (train/val/test), {args.epochs} epochs, lr {args.lr:g}, "
             f"seed {args.seed}; test top-1 (%)",
             f"{'':22s}{'vpt_deep':>10s}{'linear':>10s}{'vpt - linear':>14s}"]
    for bb in BACKBONES:
        d, l_ = by[(bb, "vpt_deep")]["test_top1"], by[(bb, "linear")]["test_top1"]
        lines.append(f"{bb:22s}{d:10.2f}{l_:10.2f}{d - l_:+14.2f}")
    gain = by[("pretrained", "vpt_deep")]["test_top1"] - by[("random-init control", "vpt_deep")]["test_top1"]
    lines.append(f"pretrained features add {gain:+.2f} points to VPT-deep over the random-init control.")
    text = "\n".join(lines)
    print(text)
    import torch

    import vpt
    from vpt.version import source_commit
    summary = {"task": args.task, "data": manifest.get("totals"), "epochs": args.epochs, "lr": args.lr,
               "seed": args.seed, "runs": rows, "table": text,
               "command": " ".join(["python"] + [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
               "versions": {"vpt": vpt.__version__, "vpt_commit": source_commit(),
                            "torch": torch.__version__, "python": platform.python_version()},
               "device": f"cpu ({torch.get_num_threads()} threads)" if not torch.cuda.is_available()
               else torch.cuda.get_device_name(0)}
    from vpt.io import atomic_write_text
    atomic_write_text(os.path.join(args.out, args.task, "summary.json"), json.dumps(summary, indent=1) + "\n")
    print(f"wrote {os.path.join(args.out, args.task, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
