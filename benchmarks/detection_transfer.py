"""Detection transfer through ``vpt sweep``: every (backbone, detector, arm) cell on BCCD searched on val, the
best lr trained with 3 seeds, test read once per final run; one result JSON per cell.

    python benchmarks/detection_transfer.py run --cells effnet_lite0:all:all --cells vit_tiny_cifar10:all:all
    python benchmarks/detection_transfer.py run --cells effnet_lite0:fcos:head,full --dry-run   # done / left
    python benchmarks/make_detection_table.py --write

Backbones: ``effnet_lite0`` (EfficientNet-Lite0 with its real ImageNet-1k weights, built by ``python
benchmarks/transfer.py effnet-weights``) with arms head (frozen, FPN + detector heads only), pixel_pad,
pixel_patch and full (fine-tuning); ``vit_tiny_cifar10`` (the shipped CIFAR-10 ViT-Ti) with arms head (no
prompts), vpt_deep and random_vpt_deep (its random-init copy with VPT-deep: the control). Detectors: fcos,
retinanet (torchvision). Each cell's recipe is ``configs/detection/<effnet|vit>_<detector>_<arm>.yaml``.

The search, the same for every cell: the grid of ``configs/spaces/detection_lr.yaml`` (absolute AdamW lr
0.0003, 0.001, 0.003, 0.01; full fine-tuning: ``detection_lr_full.yaml``, 3e-5 .. 1e-3), best epoch by val
COCO mAP, median pruner, ``--extend-edges 2`` (a best lr on the grid's edge adds the next half-decade past it,
up to twice, as in the transfer suite), then ``--seeds 3`` final runs (seeds 0, 1, 2) of the best lr, test once
each. Epochs:
the recipes' 8 (``--epochs``). Each sweep runs in its own process in a folder under
``~/.cache/vpt/detection_sweeps``; its record (best lr, every trial, the final runs' val / test mAP and mAP@0.5,
seed spread, wall time, command, versions, device, weights sha256, config) goes to
``benchmarks/results/detection/<scale>/<backbone>/<detector>/<arm>.json``. A cell whose record exists is
skipped (unless its best lies on an edge and it was made with fewer --extend-edges steps: its sweep goes on in
the same folder, keeping every finished trial); a killed sweep continues from its study when the same command
runs again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from transfer import EFFNET_FILE, _extra_versions, _sha256, epoch_seconds  # noqa: E402  (benchmarks/ helpers)
from transfer_sweep import logged_wall_seconds, record_edges, run_logged, write_json  # noqa: E402

RESULTS = os.path.join(HERE, "results", "detection")
SWEEPS_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "vpt", "detection_sweeps")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "vpt")
BCCD_TARBALL = os.path.join(REPO, "..", "shared", "data", "bccd-voc.tar.gz")
CONFIGS = os.path.join("configs", "detection")
SPACES = {"frozen": os.path.join("configs", "spaces", "detection_lr.yaml"),
          "full": os.path.join("configs", "spaces", "detection_lr_full.yaml")}
BACKBONES: Dict[str, dict] = {
    "effnet_lite0": {"prefix": "effnet", "arms": ["head", "pixel_pad", "pixel_patch", "full"]},
    "vit_tiny_cifar10": {"prefix": "vit", "arms": ["head", "vpt_deep", "random_vpt_deep"]},
}
DETECTORS = ["fcos", "retinanet"]


def config_file(backbone: str, detector: str, arm: str) -> str:
    return os.path.join(CONFIGS, f"{BACKBONES[backbone]['prefix']}_{detector}_{arm}.yaml")


def space_file(args, arm: str) -> str:
    return args.space or SPACES["full" if arm == "full" else "frozen"]


# --- cells ------------------------------------------------------------------------------------------------
def parse_cells(specs: List[str]) -> List[Tuple[str, str, str]]:
    """``BACKBONE:DETECTORS:ARMS`` (comma lists, ``all`` = every one) -> ordered (backbone, detector, arm)."""
    cells: List[Tuple[str, str, str]] = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 3:
            raise SystemExit(f"error: --cells {spec!r}: expected BACKBONE:DETECTORS:ARMS, e.g. "
                             f"effnet_lite0:fcos,retinanet:head,full (or 'all' for detectors / arms)")
        bb, dets, arms = parts
        if bb not in BACKBONES:
            raise SystemExit(f"error: --cells {spec!r}: unknown backbone {bb!r}; available: {', '.join(BACKBONES)}")
        own = BACKBONES[bb]["arms"]
        dets_l = DETECTORS if dets == "all" else [d for d in dets.split(",") if d]
        arms_l = own if arms == "all" else [a for a in arms.split(",") if a]
        for name, known in [(d, DETECTORS) for d in dets_l] + [(a, own) for a in arms_l]:
            if name not in known:
                raise SystemExit(f"error: --cells {spec!r}: unknown detector or arm {name!r} for {bb}; "
                                 f"detectors: {', '.join(DETECTORS)}; arms: {', '.join(own)}")
        for d in dets_l:
            for a in arms_l:
                if (bb, d, a) not in cells:
                    cells.append((bb, d, a))
    return cells


def record_path(args, backbone: str, detector: str, arm: str) -> str:
    return os.path.join(args.out, args.scale, backbone, detector, f"{arm}.json")


def weights_for(args, backbone: str, arm: str) -> Tuple[List[str], Optional[str]]:
    """The backbone flags of a cell and the sha256 of the weights file they load (None: random init)."""
    if backbone == "effnet_lite0":
        if not os.path.isfile(args.effnet_weights):
            raise SystemExit(f"error: {args.effnet_weights} is missing: run `python benchmarks/transfer.py "
                             f"effnet-weights` first")
        return ["--weights", args.effnet_weights], _sha256(args.effnet_weights)
    if arm.startswith("random_"):
        return [], None  # the recipe names the random-init copy
    from vpt.weights import SHIPPED
    return [], SHIPPED["vit_tiny_cifar10"]["sha256"]  # the recipe names vpt:vit_tiny_cifar10


def sweep_args(args, backbone: str, detector: str, arm: str, out_dir: str, study: str) -> List[str]:
    argv = ["-c", config_file(backbone, detector, arm), "--data", args.data, "--output", out_dir,
            "--space", space_file(args, arm), "--sampler", "grid", "--pruner", args.pruner, "--study", study,
            "--seeds", str(args.seeds), "--seed", "0", "--epochs", str(args.epochs)]
    if args.extend_edges:
        argv += ["--extend-edges", str(args.extend_edges)]
    argv += weights_for(args, backbone, arm)[0]
    for s in args.set:
        argv += ["--set", s]
    return argv


# --- the record -------------------------------------------------------------------------------------------
def _spread(values: List[float]) -> Optional[float]:
    return statistics.stdev(values) if len(values) > 1 else None


def make_record(args, backbone: str, detector: str, arm: str, out_dir: str, cmd: List[str], wall: float,
                weights_sha: Optional[str]) -> dict:
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
        res = json.load(f)
    runs = []
    for r in res["final"]["runs"]:
        run_dir = os.path.join(out_dir, r["run_dir"])
        with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
            run = json.load(f)
        with open(os.path.join(run_dir, "best", "adapter_config.json"), encoding="utf-8") as f:
            loaded = json.load(f)["backbone"]["weights_id"]  # what the chosen artifact names as its weights
        if weights_sha is not None and loaded != f"file:{weights_sha}":
            raise RuntimeError(f"{out_dir}: a final run loaded {loaded}, expected the weights {weights_sha}")
        test, val = run.get("test") or {}, run.get("val") or {}
        runs.append({"seed": r["seed"], "best_epoch": run.get("best_epoch"), "backbone_weights_id": loaded,
                     "val_mAP": val.get("mAP"), "val_mAP50": val.get("mAP50"),
                     "test_mAP": test.get("mAP"), "test_mAP50": test.get("mAP50"),
                     "test_per_class_AP": test.get("per_class_AP"),
                     "trainable_params": run["trainable_params"], "total_params": run["total_params"],
                     "train_images_per_second": run.get("train_images_per_second"),
                     "train_seconds": epoch_seconds(run_dir)})  # training epochs only, not evaluation
    if not runs:
        raise RuntimeError(f"{out_dir}/results.json has no finished final run")
    maps = [r["test_mAP"] for r in runs]
    maps50 = [r["test_mAP50"] for r in runs]
    trials = [{k: t.get(k) for k in ("number", "state", "params", "value", "best_epoch", "val_curve", "error",
                                     "seconds")} for t in res["trials"]]
    return {
        "benchmark": "detection_transfer", "scale": args.scale, "backbone": backbone, "detector": detector,
        "arm": arm, "epochs": args.epochs, "recipe": config_file(backbone, detector, arm),
        "space_file": space_file(args, arm), "space": res.get("space_given", res["space"]),
        "space_searched": res["space"], "extend_edges": args.extend_edges, "widened": res.get("widened", []),
        "sampler": res["sampler"], "pruner": res["pruner"], "budget": res["budget"],
        "best": res["best"], "edge_warning": res.get("edge_warning"), "edges": res.get("edges", {}),
        "edge_ties": res.get("edge_ties", {}),
        "test_mAP_mean": statistics.fmean(maps), "test_mAP_std": _spread(maps),
        "test_mAP50_mean": statistics.fmean(maps50), "test_mAP50_std": _spread(maps50),
        "test_mAP_range": [min(maps), max(maps)], "test_n": len(runs),
        "val_mAP_mean": statistics.fmean(r["val_mAP"] for r in runs), "final_runs": runs,
        "trainable_params": runs[0]["trainable_params"], "total_params": runs[0]["total_params"],
        "train_seconds_per_run": statistics.fmean(r["train_seconds"] for r in runs),
        # every invocation of this sweep, from its log (resumed after a kill, widened past an edge); without a
        # log, this invocation
        "trials": trials,
        "wall_seconds": logged_wall_seconds(os.path.join(os.path.dirname(out_dir), f"{arm}.log"), res["study"])
        or wall,
        "backbone_weights_sha256": weights_sha,
        "command": res["command"],
        "driver_command": " ".join(shlex.quote(c) for c in [os.path.basename(cmd[0]), *cmd[1:]]),
        "runner_command": " ".join(shlex.quote(c) for c in ["python", *sys.argv]),
        "device": res["device"], "host": platform.node(), "versions": {**res["versions"], **_extra_versions()},
        "config": res["config"], "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def load_record(path: str, args, weights_sha: Optional[str], arm: str) -> Optional[dict]:
    """An existing record (its cell is skipped); refuse one made with other epochs, weights or space."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        rec = json.load(f)
    from vpt.sweep.space import load_space
    space = load_space(os.path.join(REPO, space_file(args, arm))).to_dict()
    if rec["epochs"] != args.epochs or rec.get("backbone_weights_sha256") != weights_sha or rec["space"] != space:
        raise SystemExit(f"error: {path} was made with other epochs, backbone weights or space; use another "
                         f"--scale for this run, or move the old record away")
    if record_edges(rec) and rec.get("extend_edges", 0) < args.extend_edges:
        return None  # its best lies on an edge, and it was made with fewer widening steps: its sweep goes on
    return rec


# --- one sweep --------------------------------------------------------------------------------------------
def run_cell(args, backbone: str, detector: str, arm: str) -> Optional[dict]:
    path = record_path(args, backbone, detector, arm)
    out_dir = os.path.join(args.sweeps_root, args.scale, backbone, detector, arm)
    weights_sha = weights_for(args, backbone, arm)[1]
    study = f"{args.scale}-{backbone}-{detector}-{arm}"
    cmd = [sys.executable, os.path.relpath(__file__, REPO), "vpt-sweep",
           *sweep_args(args, backbone, detector, arm, out_dir, study)]
    name = f"{backbone} {detector} {arm}"
    if os.path.isfile(path):  # an edge to widen: the sweep goes on in its folder (its log keeps the time)
        name += f" (widening past an edge, up to --extend-edges {args.extend_edges})"
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    returncode, wall = run_logged(cmd, out_dir, arm, args.threads)
    if returncode != 0:
        print(f"  {name}: FAILED (exit {returncode}); see {os.path.dirname(out_dir)}/{arm}.log", flush=True)
        return None
    record = make_record(args, backbone, detector, arm, out_dir, cmd, wall, weights_sha)
    write_json(path, record)
    sd = record["test_mAP_std"]
    print(f"  {name}: best lr {record['best']['params'].get('optim.lr')} (val mAP {record['best']['val']:.4f}); "
          f"test mAP {record['test_mAP_mean']:.4f}{f' +/- {sd:.4f}' if sd is not None else ''} "
          f"(mAP@0.5 {record['test_mAP50_mean']:.4f}) over {record['test_n']} seeds (wall {wall:.0f}s)", flush=True)
    return record


def bccd_data(path: str, cache: str) -> str:
    from detection_bccd import bccd_dir
    return bccd_dir(path, cache)


def run(args) -> int:
    cells = parse_cells(args.cells)
    todo = []
    for cell in cells:
        if load_record(record_path(args, *cell), args, weights_for(args, cell[0], cell[2])[1], cell[2]):
            continue
        todo.append(cell)
    print(f"{len(cells)} cells ({args.scale}, {args.epochs} epochs, {args.seeds} seeds, {args.jobs} at a time): "
          f"{len(cells) - len(todo)} done, {len(todo)} to run{' (dry run)' if args.dry_run else ''}", flush=True)
    for cell in todo if args.dry_run else ():
        widen = " (its best lr lies on an edge: widen)" if os.path.isfile(record_path(args, *cell)) else ""
        print(f"  todo: {' '.join(cell)}{widen}  ({config_file(*cell)}, {space_file(args, cell[2])})")
    if args.dry_run or not todo:
        return 0
    args.data = bccd_data(args.data, args.cache)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # submitted in order: the first cells run first
        futures = [pool.submit(run_cell, args, *cell) for cell in todo]
    failures = sum(f.result() is None for f in futures)
    print(f"done; {failures} failed sweeps (run the same command again to continue them)" if failures else "done")
    return 1 if failures else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vpt-sweep"]:
        from vpt.cli import main as vpt_main
        return vpt_main(["sweep", *argv[1:]])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run the sweeps (resumable; finished cells are skipped)")
    p.add_argument("--cells", action="append", required=True, metavar="BACKBONE:DETECTORS:ARMS",
                   help="repeatable, run in order; e.g. effnet_lite0:all:all or vit_tiny_cifar10:fcos:head,vpt_deep")
    p.add_argument("--data", default=BCCD_TARBALL, help="BCCD VOC folder or bccd-voc.tar.gz (extracted once)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of every trial and final run (the recipes' 8)")
    p.add_argument("--seeds", type=int, default=3, help="final runs of the best lr (seeds 0..K-1)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument("--extend-edges", type=int, default=2, metavar="N",
                   help="vpt sweep --extend-edges: widen a cell's grid past an edge holding its best lr, up to N "
                        "times (a record made with fewer steps whose best lies on an edge runs on)")
    p.add_argument("--space", default=None, metavar="YAML",
                   help="one search space for every cell instead of configs/spaces/detection_lr*.yaml (smoke runs)")
    p.add_argument("--scale", default="e8", help="results sub-folder and label")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra override for every sweep, e.g. train.device=cuda")
    p.add_argument("--sweeps-root", default=SWEEPS_ROOT, help="sweep folders (trials, study.db) outside the repo")
    p.add_argument("--cache", default=CACHE, help="where the BCCD tarball is extracted")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--effnet-weights", default=EFFNET_FILE)
    p.add_argument("--jobs", type=int, default=1, help="sweeps at a time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per sweep")
    p.add_argument("--dry-run", action="store_true", help="only list what is done and what would run")
    args = ap.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
