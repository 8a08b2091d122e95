"""The scale claim: does prompt tuning approach full fine-tuning as the backbone grows? Pretrain ViT-Ti, ViT-S
and ViT-B on CIFAR-10 with one recipe, then tune linear probe, VPT-deep, LoRA and full fine-tuning on the five
transfer tasks through ``vpt sweep``; plot each arm's gap to full fine-tuning against the backbone's parameters.

    python benchmarks/scale_study.py all --device cuda            # pretrain (bf16) + transfer + table/plot
    python benchmarks/scale_study.py pretrain --sizes s --device cuda
    python benchmarks/scale_study.py transfer --sizes ti,s,b --jobs 4 --set train.device=cuda
    python benchmarks/scale_study.py table --write                 # README block + PNG from the records
    python benchmarks/scale_study.py all --cpu-smoke --work /tmp/scale_smoke --data-tar C10 --data-root DATA
    python benchmarks/scale_study.py bundle --sizes ti --bundle $OUT/scale_ti.tar.gz   # on the lent machine, last
    python benchmarks/scale_study.py unbundle --bundle scale_ti.tar.gz                 # here: records + weights back

Pretraining: ``benchmarks/pretrain_vit_cifar10.py`` (vpt's engine, bf16 autocast and the whole data set on the
GPU) with the GPU recipe of its docstring for every size: 200 epochs, batch 512, AdamW lr 2e-3, 5 warmup
epochs, mixup 0.8, cutmix 1.0, compile; 32 px, patch 4, timm's widths / heads / depth 12 / mlp ratio 4 (ViT-Ti
192 / 3, ViT-S 384 / 6, ViT-B 768 / 12). Weights: ``<work>/pretrain/<size>/vit_<size>_cifar10.safetensors``.

Transfer: benchmarks/transfer_sweep.py's machinery, unchanged: the recipe ``transfer_configs/vit_tiny_cifar10.yaml``
with the size's architecture, the arm's 7-lr space, grid sampler, median pruner, --pack 7 for the frozen arms,
3 seeds of the best lr, test once, --extend-edges 2, 10 epochs. Records:
``benchmarks/results/scale_study/e10/scale_<size>/<task>/<arm>.json`` (command, versions, device, weights
sha256, config, trials, final seeds); pretraining records: ``benchmarks/results/scale_study/pretrain_<size>.json``.

Table and plot: per size and arm, the mean over tasks of (full fine-tuning - arm) test top-1, against the
backbone's parameters; ``benchmarks/results/scale_study.png`` and the block between the markers in
benchmarks/README.md. ``--cpu-smoke``: toy widths (32 / 64, 2 blocks), 1 pretraining epoch on 200 images,
1 transfer epoch, 1 seed, the spaces in ``--spaces-dir`` if given: checks the plumbing, measures nothing.

Bundle: a lent GPU machine returns at most 8 files of 16 MiB each from ``$OUT``, no more than 2 folders down, and
forgets everything else when it is given back. ``bundle`` packs what the study needs later into one .tar.gz: every
JSON record under ``--out``, and per size the pretraining ``results.json``, ``train.log`` and the weights file when
the bundle stays under ``--bundle-max-mib`` (ViT-Ti's 22 MB compress to about 20; ViT-S / ViT-B never fit: their
transfer stage has to run in the same lease as their pretraining). ``bundle.json`` inside lists each file with its
sha256 and each weights file left out. ``unbundle`` checks those sha256s and sizes, refuses links, unsafe names and
anything but records and the known sizes' pretraining files, and only then writes records to ``--out`` and
pretraining files to ``--work`` (an existing file that differs is an error; an identical one is kept).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import transfer_sweep as ts  # noqa: E402  (benchmarks/ helpers: the sweep machinery this reuses)
from transfer import DATA_ROOT, TASKS  # noqa: E402

ARMS = ["linear", "vpt_deep", "lora", "full"]
SIZES: Dict[str, dict] = {  # 32 px, patch 4 (the shipped ViT's input), timm's ViT-Ti / S / B widths at depth 12
    "ti": {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4},
    "s": {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4},
    "b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4},
}
SMOKE_SIZES: Dict[str, dict] = {"toy32": {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2},
                                "toy64": {"embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2}}
# the GPU recipe of pretrain_vit_cifar10.py's docstring, the same for every size
PRETRAIN_GPU = ["--epochs", "200", "--batch-size", "512", "--lr", "2e-3", "--warmup-epochs", "5", "--mixup", "0.8",
                "--cutmix", "1.0", "--compile"]
PRETRAIN_SMOKE = ["--epochs", "1", "--batch-size", "32", "--warmup-epochs", "0.5", "--limit-train", "200",
                  "--limit-test", "100", "--log-every", "0", "--threads", "1"]
BASE_KWARGS = {"img_size": 32, "patch_size": 4, "global_pool": "token",
               "pretrained_cfg_overlay": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0}}
WORK = os.path.join(os.path.expanduser("~"), ".cache", "vpt", "scale_study")
OUT = os.path.join(HERE, "results", "scale_study")
PLOT = os.path.join(HERE, "results", "scale_study.png")
README = os.path.join(HERE, "README.md")
START, END = "<!-- scale-study:start -->", "<!-- scale-study:end -->"
ARM_NAMES = {"linear": "linear probe", "vpt_deep": "VPT-deep", "lora": "LoRA r8", "full": "full fine-tuning"}


def sizes_of(args) -> Dict[str, dict]:
    table = SMOKE_SIZES if args.cpu_smoke else SIZES
    names = list(table) if args.sizes == "all" else [s for s in args.sizes.split(",") if s]
    for n in names:
        if n not in table:
            raise SystemExit(f"error: unknown size {n!r}; available: {', '.join(table)}")
    return {n: table[n] for n in names}


def weights_path(args, size: str) -> str:
    return os.path.join(args.work, "pretrain", size, f"vit_{size}_cifar10.safetensors")


def setup_name(size: str) -> str:
    return f"scale_{size}"


# --- 1. pretraining ----------------------------------------------------------------------------------------
def pretrain(args) -> int:
    import pretrain_vit_cifar10 as pv
    for size, kw in sizes_of(args).items():
        out = os.path.dirname(weights_path(args, size))
        record = os.path.join(args.out, f"pretrain_{size}.json")
        if os.path.isfile(weights_path(args, size)) and os.path.isfile(os.path.join(out, "results.json")):
            print(f"pretrain {size}: done ({weights_path(args, size)})")
        else:
            recipe = PRETRAIN_SMOKE if args.cpu_smoke else PRETRAIN_GPU
            if args.pretrain_epochs is not None:
                recipe = [*recipe, "--epochs", str(args.pretrain_epochs)]  # the later flag wins (argparse)
            argv = ["--out", out, "--data-tar", args.data_tar, "--cache-dir", args.cache_dir, "--device", args.device,
                    "--model-kwargs", json.dumps(kw), "--weights-name", os.path.basename(weights_path(args, size)),
                    *recipe, *(["--resume"] if os.path.isdir(out) else [])]
            if args.cpu_smoke:
                argv = [a for a in argv if a != "--compile"]
            print(f"pretrain {size}: {' '.join(argv)}", flush=True)
            rc = pv.main(argv)
            if rc != 0:
                return rc
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            res = json.load(f)
        brief = {k: res.get(k) for k in ("test_top1", "n_params", "epochs", "model_name", "model_kwargs", "command",
                                         "versions", "device", "train_wall_time_s", "weights_sha256", "hparams",
                                         "data_tar_sha256", "finished")}
        ts.write_json(record, {"benchmark": "scale_study_pretrain", "size": size, **brief})
        print(f"pretrain {size}: CIFAR-10 test top-1 {res['test_top1']:.2f}%, {res['n_params']:,} params")
    return 0


# --- 2. transfer -------------------------------------------------------------------------------------------
def register_setups(args) -> List[str]:
    """One transfer_sweep setup per size: the tiny recipe with this size's architecture and weights file."""
    names = []
    for size, kw in sizes_of(args).items():
        name = setup_name(size)
        ts.SETUPS[name] = {"recipe": "vit_tiny_cifar10.yaml", "side": 32, "arms": list(ARMS),
                           "weights": weights_path(args, size),
                           "set": {"model.backbone.model_kwargs": {**BASE_KWARGS, **kw}}}
        names.append(name)
    return names


def transfer_args(args) -> argparse.Namespace:
    ns = argparse.Namespace(**vars(args))
    ns.control, ns.scale, ns.out = False, args.scale, os.path.join(args.out)
    ns.data_root, ns.sweeps_root = args.data_root, os.path.join(args.work, "sweeps")
    ns.effnet_weights = ts.EFFNET_FILE
    return ns


def transfer(args) -> int:
    from transfer_data import read_manifest
    setups = register_setups(args)
    for size in sizes_of(args):
        if not os.path.isfile(weights_path(args, size)):
            raise SystemExit(f"error: {weights_path(args, size)} is missing: run `scale_study.py pretrain` first")
    tasks = TASKS if args.tasks == "all" else [t for t in args.tasks.split(",") if t]
    for t in tasks:
        read_manifest(args.data_root, t)
    ns = transfer_args(args)
    todo = []
    for setup in setups:
        sha = ts.weights_for(ns, setup)[1]
        for t in tasks:
            for arm in ARMS:
                if not ts.load_record(ts.record_path(ns.out, ns.scale, setup, t, arm), ns, sha, arm):
                    todo.append((setup, t, arm))
    total = len(setups) * len(tasks) * len(ARMS)
    print(f"{total} sweeps: {total - len(todo)} done, {len(todo)} to run{' (dry run)' if args.dry_run else ''}")
    for cell in todo if args.dry_run else ():
        print("  todo: " + " ".join(cell))
    if args.dry_run or not todo:
        return 0
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(ts.run_cell, ns, *cell) for cell in todo]
    failures = sum(f.result() is None for f in futures)
    print(f"done; {failures} failed sweeps" if failures else "done")
    return 1 if failures else 0


# --- 3. table and plot -------------------------------------------------------------------------------------
def collect(args) -> Dict[str, dict]:
    """size -> {params, cifar10, arms: {arm: {task: record}}} for the sizes with records."""
    out: Dict[str, dict] = {}
    for size in sizes_of(args):
        pre = os.path.join(args.out, f"pretrain_{size}.json")
        if not os.path.isfile(pre):
            continue
        with open(pre, encoding="utf-8") as f:
            p = json.load(f)
        arms: Dict[str, Dict[str, dict]] = {}
        for arm in ARMS:
            for t in TASKS:
                path = ts.record_path(args.out, args.scale, setup_name(size), t, arm)
                if os.path.isfile(path):
                    with open(path, encoding="utf-8") as f:
                        arms.setdefault(arm, {})[t] = json.load(f)
        out[size] = {"params": p["n_params"], "cifar10": p["test_top1"], "arms": arms}
    return out


def gaps(entry: dict) -> Dict[str, Optional[float]]:
    """arm -> mean over the tasks both it and full fine-tuning have of (full - arm) test top-1."""
    full = entry["arms"].get("full", {})
    out: Dict[str, Optional[float]] = {}
    for arm in ARMS[:-1]:
        mine = entry["arms"].get(arm, {})
        common = [t for t in mine if t in full]
        out[arm] = statistics.fmean(full[t]["test_top1_mean"] - mine[t]["test_top1_mean"] for t in common) \
            if common else None
    return out


def table(data: Dict[str, dict]) -> str:
    if not data:
        return "No records yet: run `python benchmarks/scale_study.py all --device cuda` (benchmarks/gpu_queue.md item 3)."
    lines = ["| size | params | CIFAR-10 top-1 | tasks | " + " | ".join(f"{ARM_NAMES[a]} (gap to full)" for a in ARMS[:-1])
             + " | full fine-tuning |", "|---|---|---|---|" + "---|" * len(ARMS)]
    for size, e in data.items():
        g = gaps(e)
        full = e["arms"].get("full", {})
        cells = []
        for arm in ARMS[:-1]:
            mine = e["arms"].get(arm, {})
            mean = statistics.fmean(r["test_top1_mean"] for r in mine.values()) if mine else None
            cells.append("–" if mean is None else f"{mean:.1f} ({g[arm]:+.1f})" if g[arm] is not None else f"{mean:.1f}")
        fm = statistics.fmean(r["test_top1_mean"] for r in full.values()) if full else None
        n = len(set().union(*[set(v) for v in e["arms"].values()])) if e["arms"] else 0
        lines.append(f"| {size} | {e['params'] / 1e6:.2f} M | {e['cifar10']:.2f} | {n} | " + " | ".join(cells)
                     + f" | {'–' if fm is None else f'{fm:.1f}'} |")
    return "\n".join(lines)


def plot(data: Dict[str, dict], path: str) -> Optional[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, color in (("linear", "C7"), ("vpt_deep", "C0"), ("lora", "C1")):
        pts = [(e["params"], gaps(e)[arm]) for e in data.values() if gaps(e)[arm] is not None]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, "o-", color=color, label=ARM_NAMES[arm])
    for size, e in data.items():
        ax.annotate(size, (e["params"], 0), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=8)
    ax.axhline(0, color="C2", lw=1, ls="--", label="full fine-tuning")
    ax.set_xscale("log")
    ax.set_xlabel("backbone parameters")
    ax.set_ylabel("full fine-tuning minus arm, test top-1 (points)")
    ax.set_title("Gap to full fine-tuning vs backbone size (mean over tasks)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table_cmd(args) -> int:
    from make_table import replace_block
    data = collect(args)
    text = table(data)
    png = plot(data, args.plot)
    if png:
        text += f"\n\n![gap to full fine-tuning vs parameters]({os.path.relpath(png, os.path.dirname(os.path.abspath(args.readme)))})"
    if not args.write:
        print(text)
        return 0
    return 0 if replace_block(args.readme, START, END, text) else 1


# --- 4. bundle / unbundle (the way back from a lent GPU machine) ----------------------------------------------
BUNDLE_INDEX = "bundle.json"
PRETRAIN_FILES = ("results.json", "train.log")
MAX_MEMBER_BYTES = 1 << 30  # unbundle: no member may be larger (ViT-B's fp32 weights are 340 MB)
MAX_INDEX_BYTES = 16 << 20
SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _bundle_members(args) -> List[tuple]:
    """(arcname, path, kind) for every file a bundle may carry; kind is record, pretrain or weights."""
    members = []
    for root, _dirs, files in os.walk(args.out):
        for name in sorted(files):
            if name.endswith(".json"):
                path = os.path.join(root, name)
                members.append(("records/" + os.path.relpath(path, args.out).replace(os.sep, "/"), path, "record"))
    for size in sizes_of(args):
        folder = os.path.dirname(weights_path(args, size))
        for name in PRETRAIN_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                members.append((f"pretrain/{size}/{name}", os.path.join(folder, name), "pretrain"))
        if os.path.isfile(weights_path(args, size)):
            members.append((f"pretrain/{size}/{os.path.basename(weights_path(args, size))}", weights_path(args, size),
                            "weights"))
    return sorted(members)


def bundle(args) -> int:
    """One .tar.gz of the records, the pretraining logs and the weights that fit under --bundle-max-mib."""
    import io
    import tarfile
    from transfer_data import sha256_path
    if not args.bundle:
        raise SystemExit("error: bundle needs --bundle PATH.tar.gz (e.g. $OUT/scale_ti.tar.gz on a lent machine)")
    limit = int(args.bundle_max_mib * 2 ** 20)
    members = _bundle_members(args)
    if not members:
        raise SystemExit(f"error: nothing to bundle under {args.out} or {args.work}: run pretrain / transfer first")
    keep, left_out = [m for m in members if m[2] != "weights"], []
    weights = [m for m in members if m[2] == "weights"]

    def write(chosen) -> int:
        index = {"benchmark": "scale_study_bundle", "files": {a: sha256_path(p) for a, p, _ in chosen},
                 "weights_left_out": left_out, "command": "python benchmarks/scale_study.py " + " ".join(args.argv)}
        tmp = args.bundle + f".tmp{os.getpid()}"
        with tarfile.open(tmp, "w:gz") as tar:
            data = json.dumps(index, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(BUNDLE_INDEX)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for arc, path, _ in chosen:
                tar.add(path, arcname=arc, recursive=False)
        os.replace(tmp, args.bundle)
        return os.path.getsize(args.bundle)

    os.makedirs(os.path.dirname(os.path.abspath(args.bundle)), exist_ok=True)
    size = write(keep)
    if size > limit:
        raise SystemExit(f"error: the records and logs alone are {size / 2**20:.1f} MiB, over --bundle-max-mib "
                         f"{args.bundle_max_mib}; bundle fewer sizes at a time")
    for m in sorted(weights, key=lambda m: os.path.getsize(m[1])):  # smallest first, while under the limit
        trial = write(keep + [m])
        if trial <= limit:
            keep.append(m)
        else:
            left_out.append({"file": m[0], "sha256": sha256_path(m[1]), "bytes": os.path.getsize(m[1]),
                             "why": f"the bundle would be {trial / 2**20:.1f} MiB, over {args.bundle_max_mib} MiB"})
    size = write(keep)
    print(f"bundle: {args.bundle}, {size / 2**20:.2f} MiB, {len(keep)} files"
          + "".join(f"; left out {w['file']} ({w['why']})" for w in left_out))
    return 0


def unbundle(args) -> int:
    """Extract a bundle: records -> --out, pretraining files -> --work, each checked against bundle.json."""
    import tarfile
    from transfer_data import sha256_bytes
    if not args.bundle or not os.path.isfile(args.bundle):
        raise SystemExit(f"error: unbundle needs --bundle FILE (an existing scale_study.py bundle); "
                         f"got {args.bundle!r}")
    known_sizes = {*SIZES, *SMOKE_SIZES}
    with tarfile.open(args.bundle, "r:gz") as tar:
        try:
            info = tar.getmember(BUNDLE_INDEX)
            if not info.isfile() or info.size > MAX_INDEX_BYTES:
                raise ValueError(f"{BUNDLE_INDEX} is not a plain file under {MAX_INDEX_BYTES} bytes")
            index = json.load(tar.extractfile(info))
            files = dict(index["files"])
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise SystemExit(f"error: {args.bundle} has no valid {BUNDLE_INDEX} ({e}): not a scale_study.py bundle")
        plan, members = [], tar.getmembers()
        for m in members:  # every check before anything is written: names, sizes, sha256
            if m.name == BUNDLE_INDEX:
                continue
            parts = m.name.split("/")
            if not m.isfile() or m.name not in files or not all(SAFE_PART.match(p) and p != ".." for p in parts):
                raise SystemExit(f"error: {args.bundle}: refusing member {m.name!r} (not a plain file listed in "
                                 f"{BUNDLE_INDEX}, or an unsafe path)")
            if parts[0] == "records" and 2 <= len(parts) <= 5 and m.name.endswith(".json"):
                dest = os.path.join(args.out, *parts[1:])
            elif (parts[0] == "pretrain" and len(parts) == 3 and parts[1] in known_sizes
                  and parts[2] in (*PRETRAIN_FILES, f"vit_{parts[1]}_cifar10.safetensors")):
                dest = os.path.join(args.work, *parts)
            else:
                raise SystemExit(f"error: {args.bundle}: unexpected member {m.name!r}")
            if m.size > MAX_MEMBER_BYTES:
                raise SystemExit(f"error: {args.bundle}: {m.name} is {m.size} bytes, over the {MAX_MEMBER_BYTES} "
                                 f"a bundle member may have")
            data = tar.extractfile(m).read(MAX_MEMBER_BYTES + 1)
            if sha256_bytes(data) != files[m.name]:
                raise SystemExit(f"error: {args.bundle}: {m.name} does not match its sha256 in {BUNDLE_INDEX} "
                                 f"(damaged)")
            if os.path.isfile(dest):
                with open(dest, "rb") as f:
                    if f.read() != data:
                        raise SystemExit(f"error: {dest} exists and differs from the bundle's copy; move it away first")
                continue  # the same file: kept
            plan.append((dest, data))
    missing = sorted(set(files) - {m.name for m in members})
    if missing:
        raise SystemExit(f"error: {args.bundle}: {BUNDLE_INDEX} lists files the archive lacks: {', '.join(missing)}")
    for dest, data in plan:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = dest + f".tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    for w in index.get("weights_left_out", []):
        print(f"unbundle: {w.get('file')} was not in the bundle ({w.get('why')})")
    print(f"unbundle: {len(plan)} new files into {args.out} and {args.work}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("stage", choices=["pretrain", "transfer", "table", "all", "bundle", "unbundle"])
    ap.add_argument("--sizes", default="all", help=f"comma list or all: {', '.join(SIZES)}")
    ap.add_argument("--cpu-smoke", action="store_true", help="toy sizes and schedules (plumbing only)")
    ap.add_argument("--work", default=WORK, help="pretraining runs and sweep folders (outside the repo)")
    ap.add_argument("--out", default=OUT, help="result records")
    ap.add_argument("--device", default="auto", help="pretraining device (cuda: bf16 autocast)")
    ap.add_argument("--pretrain-epochs", type=int, default=None,
                    help="override the recipe's 200 pretraining epochs (the same for every size: say so in results)")
    ap.add_argument("--data-tar", default=os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz"))
    ap.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "vpt", "cifar10"))
    ap.add_argument("--data-root", default=DATA_ROOT, help="prepared transfer tasks (transfer_data.py prepare)")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--scale", default="e10", help="records sub-folder")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pack", type=int, default=7)
    ap.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    ap.add_argument("--extend-edges", type=int, default=2)
    ap.add_argument("--spaces-dir", default=None, help="replace transfer_configs/spaces (smoke runs)")
    ap.add_argument("--set", action="append", default=[], help="extra override for every sweep (train.device=cuda)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--write", action="store_true", help="table: write the README block")
    ap.add_argument("--readme", default=README)
    ap.add_argument("--plot", default=PLOT)
    ap.add_argument("--bundle", default=None, help="bundle / unbundle: the .tar.gz (e.g. $OUT/scale_ti.tar.gz)")
    ap.add_argument("--bundle-max-mib", type=float, default=15.5,
                    help="bundle: size limit (a lent machine returns files of at most 16 MiB)")
    args = ap.parse_args(argv)
    args.argv = list(argv)
    args.data_root = os.path.expanduser(args.data_root)
    if args.cpu_smoke:
        args.device = "cpu"
        args.epochs, args.seeds = 1, 1
    stages = ["pretrain", "transfer", "table"] if args.stage == "all" else [args.stage]
    for stage in stages:
        rc = {"pretrain": pretrain, "transfer": transfer, "table": table_cmd, "bundle": bundle,
              "unbundle": unbundle}[stage](args)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
