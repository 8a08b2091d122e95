#!/usr/bin/env python3
"""Detection transfer on BCCD (Pascal VOC, its own train/val/test lists): a frozen ViT with VPT-deep
prompts versus the same frozen ViT unprompted, same pyramid and torchvision head, same seed and schedule.

Each variant is one `vpt train --task detection` run (through the same function the CLI calls); the
best epoch is picked on val mAP and the test split is evaluated once. COCO mAP comes from
faster-coco-eval (or pycocotools).

CPU (2 cores, minutes)::

    python3 benchmarks/detection_bccd.py --data /work/shared/data/bccd-voc.tar.gz \\
        -c det_bccd_cpu --out benchmarks/results/detection_bccd_cpu.json

GPU::

    python3 benchmarks/detection_bccd.py --data BCCD_DIR -c det_bccd_gpu \\
        --out benchmarks/results/detection_bccd_gpu.json --set train.device=cuda
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tarfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {"prompted": [], "unprompted": ["model.prompt=null"]}


def bccd_dir(path: str, cache: str) -> str:
    """A VOC folder as given, or the tarball extracted once into ``cache``."""
    if os.path.isdir(path):
        return path
    target = os.path.join(cache, "bccd")
    root = os.path.join(target, "BCCD")
    if not os.path.isdir(os.path.join(root, "Annotations")):
        os.makedirs(target, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(target, filter="data")
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="BCCD VOC folder or bccd-voc.tar.gz")
    ap.add_argument("-c", "--config", default="det_bccd_cpu", help="a packaged recipe name or a YAML file")
    ap.add_argument("--out", default="benchmarks/results/detection_bccd_cpu.json")
    ap.add_argument("--runs", default=os.path.expanduser("~/.cache/vpt/bench_detection_runs"))
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/vpt"))
    ap.add_argument("--set", action="append", default=[], help="config override a.b=c (both variants)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 is far faster than 2 on a shared, oversubscribed CPU)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="train.seed values (prompt / pyramid / head init, data order); the frozen ViT stays the same")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from vpt.cli import build_parser
    from vpt.commands.train import command_line, resolve_run_config
    from vpt.engine import train
    from vpt.tasks import task_class

    data = bccd_dir(args.data, args.cache)
    out = {"benchmark": "detection_bccd",
           "command": " ".join(shlex.quote(a) for a in ["python3", "benchmarks/detection_bccd.py", *(argv or sys.argv[1:])]),
           "question": "does a learned prompt help a frozen ViT detect (same pyramid + head, same schedule)?",
           "variants": {}}
    for name, extra in VARIANTS.items():
        runs = {}
        for seed in args.seeds:
            ns = build_parser().parse_args([
                "train", "--task", "detection", "-c", args.config, "--data", data, "--seed", str(seed), "--overwrite",
                "--output", os.path.join(args.runs, f"{name}_s{seed}"),
                *(a for s in [*args.set, *extra] for a in ("--set", s))])
            cfg = resolve_run_config(ns)
            t0 = time.perf_counter()
            res = train(task_class("detection")(cfg), overwrite=True, command=command_line(ns))
            brief = {k: res[k] for k in ("command", "selection", "best_epoch", "trainable_params", "total_params",
                                         "train_images_per_second", "data", "classes", "label_map", "config")}
            for split in ("val", "test"):
                m = res[split]
                brief[split] = None if m is None else {k: m[k] for k in (
                    "mAP", "mAP50", "mAP75", "per_class_AP", "num_images", "num_gt_boxes", "evaluator")}
            brief["wall_seconds"] = round(time.perf_counter() - t0, 1)
            runs[str(seed)] = brief
            out["device"], out["versions"] = res["device"], res["versions"]
            logging.info("%s seed %d: test mAP %.4f mAP@0.5 %.4f (%.0fs)", name, seed, res["test"]["mAP"],
                         res["test"]["mAP50"], brief["wall_seconds"])
        tests = [r["test"] for r in runs.values()]
        out["variants"][name] = {
            "test_mAP_mean": sum(t["mAP"] for t in tests) / len(tests),
            "test_mAP50_mean": sum(t["mAP50"] for t in tests) / len(tests),
            "test_mAP_per_seed": [t["mAP"] for t in tests],
            "test_mAP50_per_seed": [t["mAP50"] for t in tests],
            "runs": runs}
    p, u = out["variants"]["prompted"], out["variants"]["unprompted"]
    first = next(iter(p["runs"].values()))
    c = first["config"]
    bb = c["model"]["backbone"]
    mk = bb["model_kwargs"]
    wall = sum(r["wall_seconds"] for v in (p, u) for r in v["runs"].values())

    def per_seed(v):
        return "/".join(f"{x:.3f}" for x in v["test_mAP_per_seed"])
    out["table_row"] = (
        f"| detection BCCD ({c['detector']['kind']}, {bb['name'].split(':')[-1]} d{mk.get('depth', '?')} "
        f"w{mk.get('embed_dim', '?')} {'random-init' if not bb['pretrained'] and not bb['weights'] else 'pretrained'}, "
        f"{c['detector']['min_size']}px, {c['train']['epochs']} ep, seeds {','.join(map(str, args.seeds))}) "
        f"| test mAP (mAP@0.5), mean of seeds: prompted {p['test_mAP_mean']:.3f} ({p['test_mAP50_mean']:.3f}) "
        f"[{per_seed(p)}], unprompted {u['test_mAP_mean']:.3f} ({u['test_mAP50_mean']:.3f}) [{per_seed(u)}] "
        f"| {out['device']} | {wall:.0f} s |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(out["table_row"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
