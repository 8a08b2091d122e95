"""Transfer suite through ``vpt sweep``: every (setup, task, arm) searched on val, the best lr trained with 3
seeds, test read once per final run.

    python benchmarks/transfer_sweep.py run --cells vit_tiny_cifar10:mnist,fashion_mnist,elpv:all --jobs 2
    python benchmarks/transfer_sweep.py run --cells effnet_lite0:all:linear,pixel_pad --jobs 2
    python benchmarks/transfer_sweep.py run --cells ... --dry-run            # what is done, what is left
    python benchmarks/make_table.py --write

Same data, recipes (``transfer_configs/*.yaml``), arms and epochs (10) as the ``transfer.py`` table it is
compared with; only the search differs: one ``vpt sweep`` per (task, arm) over the arm's space in
``transfer_configs/spaces/`` (7 lrs a half-decade apart, the same 7-trial budget for every method), grid
sampler, median pruner, ``--seeds 3`` (seeds 0, 1, 2, like the old table), ``--pack 7`` for the frozen arms
(the whole grid trained in one backbone pass; exact, see tests/test_sweep_packed.py), ``--extend-edges 2`` (a
best lr on the grid's edge gets the next half-decade lr past it searched too, at most twice; the same rule for
every method).

Each sweep runs in its own process (``vpt sweep`` via ``vpt.cli.main``) in a folder under
``~/.cache/vpt/transfer_sweeps`` (trial run folders, study.db, plots); when it finishes, a compact record
(best setting, every trial's val curve, the final runs' val / test, edge warning, commands, versions, device,
config, weights sha256, data manifest) is written to
``benchmarks/results/transfer/sweep/<scale>/<tag>/<task>/<arm>.json``. A cell whose record exists is
skipped; a killed sweep continues from its study when the same command runs again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from transfer import (ARMS, DATA_ROOT, HERE, REPO, RESULTS, SETUPS, TASKS, WEIGHTS_DIR, _extra_versions,
                      _sha256, epoch_seconds)

SWEEP_RESULTS = os.path.join(RESULTS, "sweep")
SWEEPS_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "vpt", "transfer_sweeps")
SPACES_DIR = os.path.join(HERE, "transfer_configs", "spaces")
SPACES = {"linear": "head.yaml", "vpt_shallow": "head.yaml", "vpt_deep": "head.yaml", "vpt_prefix": "head.yaml",
          "pixel_pad": "head.yaml", "lora": "lora.yaml", "full": "full.yaml",
          # the PEFT baselines: the same 7-lr budget, from LoRA's range (adapters) / full's (partial tuning);
          # E2VPT trains VPT-deep's prompts and head plus key-value prompts: VPT-deep's space (on methods.yaml
          # its lfw_faces sweep tied at val 100 from the bottom and the tie rule chose lr 1e-4's neighbour 3e-4)
          **{a: "methods.yaml" for a in ("adapter", "adaptformer", "ssf", "bitfit", "fact", "peft_loha", "convpass",
                                         "repadapter")},
          "e2vpt": "head.yaml", "partial1": "full.yaml"}
PACK_ARMS = ("linear", "vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad")  # frozen backbone: packable
# pixel prompts on a CNN share no backbone work between packed trials (vpt.sweep.packed: the K prompted
# copies of the batch run the whole network) and would hold K batches' activations at once: run them alone
NO_PACK = {("effnet_lite0", "pixel_pad")}


def space_path(args, arm: str) -> str:
    """The arm's search space (``args.spaces_dir``, when set, replaces transfer_configs/spaces: smoke runs)."""
    root = getattr(args, "spaces_dir", None)
    return os.path.join(root, SPACES[arm]) if root else os.path.join("benchmarks", "transfer_configs", "spaces",
                                                                      SPACES[arm])


def pack_of(args, setup: str, arm: str) -> int:
    return args.pack if arm in PACK_ARMS and (setup, arm) not in NO_PACK else 1
EFFNET_FILE = os.path.join(WEIGHTS_DIR, "tf_efficientnet_lite0_in1k.safetensors")


def vpt_sweep(argv: List[str]) -> int:
    """``vpt sweep ARGS`` in this process (each sweep runs in its own child process)."""
    from vpt.cli import main
    return main(["sweep", *argv])


# --- cells ------------------------------------------------------------------------------------------------
def parse_cells(specs: List[str], control: bool = False) -> List[Tuple[str, str, str]]:
    """``SETUP:TASKS:ARMS`` (comma lists, ``all`` = the setup's) -> ordered (setup, task, arm), task-major."""
    cells: List[Tuple[str, str, str]] = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 3:
            raise SystemExit(f"error: --cells {spec!r}: expected SETUP:TASKS:ARMS, e.g. "
                             f"vit_tiny_cifar10:mnist,elpv:linear,vpt_deep (or 'all' for tasks / arms)")
        setup, tasks, arms = parts
        if setup not in SETUPS:
            raise SystemExit(f"error: --cells {spec!r}: unknown setup {setup!r}; available: {', '.join(SETUPS)}")
        own = SETUPS[setup]["control_arms" if control else "arms"]
        tasks_l = TASKS if tasks == "all" else [t for t in tasks.split(",") if t]
        arms_l = own if arms == "all" else [a for a in arms.split(",") if a]
        if not control:  # the PEFT baselines run when named
            own = own + list(SETUPS[setup].get("method_arms", []))
        for name, known in [(t, TASKS) for t in tasks_l] + [(a, own) for a in arms_l]:
            if name not in known:
                raise SystemExit(f"error: --cells {spec!r}: unknown task or arm {name!r} for {setup}; "
                                 f"tasks: {', '.join(TASKS)}; arms: {', '.join(own)}")
        for t in tasks_l:
            for a in arms_l:
                if (setup, t, a) not in cells:
                    cells.append((setup, t, a))
    return cells


def tag_of(setup: str, control: bool) -> str:
    return setup + ("-control" if control else "")


def record_path(out_root: str, scale: str, tag: str, task: str, arm: str) -> str:
    return os.path.join(out_root, scale, tag, task, f"{arm}.json")


def sweep_dir(args, tag: str, task: str, arm: str) -> str:
    return os.path.join(args.sweeps_root, args.scale, tag, task, arm)


def weights_for(args, setup: str) -> Tuple[List[str], Optional[str]]:
    """The backbone flags for a setup and the sha256 of the weights file they load (None: random init)."""
    if args.control:
        return ["--set", "model.backbone.pretrained=false", "--set", "model.backbone.init_seed=0"], None
    conf = SETUPS[setup]
    if conf.get("weights"):  # a setup registered at run time with its own file (benchmarks/scale_study.py)
        return ["--weights", conf["weights"]], _sha256(conf["weights"])
    if setup == "effnet_lite0":
        if not os.path.isfile(args.effnet_weights):
            raise SystemExit(f"error: {args.effnet_weights} is missing: run `python benchmarks/transfer.py "
                             f"effnet-weights` first")
        return ["--weights", args.effnet_weights], _sha256(args.effnet_weights)
    from vpt.weights import SHIPPED
    return ["--model", "vpt:vit_tiny_cifar10"], SHIPPED["vit_tiny_cifar10"]["sha256"]


def sweep_args(args, setup: str, task: str, arm: str, out_dir: str, study: str) -> List[str]:
    conf = SETUPS[setup]
    argv = ["-c", os.path.join("benchmarks", "transfer_configs", conf["recipe"]),
            "--data", os.path.join(args.data_root, task), "--output", out_dir,
            "--space", space_path(args, arm),
            "--sampler", "grid", "--pruner", args.pruner, "--study", study,
            "--seeds", str(args.seeds), "--seed", "0", "--epochs", str(args.epochs)]
    if pack_of(args, setup, arm) > 1:
        argv += ["--pack", str(pack_of(args, setup, arm))]
    if args.extend_edges:
        argv += ["--extend-edges", str(args.extend_edges)]
    argv += weights_for(args, setup)[0]
    for key, value in conf.get("set", {}).items():  # a run-time setup's own overrides (its architecture)
        argv += ["--set", f"{key}={json.dumps(value)}"]
    pad = max(1, round(conf["side"] * 30 / 224))
    for key, value in ARMS[arm].items():
        if isinstance(value, dict):
            value = {k: (pad if v == "{pad}" else v) for k, v in value.items()}
        argv += ["--set", f"{key}={json.dumps(value)}"]
    for s in args.set:
        argv += ["--set", s]
    return argv


# --- the record -------------------------------------------------------------------------------------------
def _final_run_facts(out_dir: str, run: dict) -> dict:
    """trainable params and training seconds of one final run (its own results.json / metrics.csv)."""
    run_dir = os.path.join(out_dir, run["run_dir"])
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
        res = json.load(f)
    test = res.get("test") or {}
    return {"seed": run["seed"], "val_top1": (run.get("val") or {}).get("top1"),
            "test_top1": (run.get("test") or {}).get("top1"),
            "test_mean_per_class_recall": test.get("mean_per_class_recall"),
            "best_epoch": run.get("best_epoch"), "train_seconds": epoch_seconds(run_dir),
            "trainable_params": res["trainable_params"], "total_params": res["total_params"],
            "backbone_weights_id": res["backbone"]["weights_id"], "data": res["data"]}


def make_record(args, setup: str, task: str, arm: str, out_dir: str, cmd: List[str], wall: float,
                weights_sha: Optional[str]) -> dict:
    from transfer_data import read_manifest
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
        res = json.load(f)
    final = res["final"]
    runs = [_final_run_facts(out_dir, r) for r in final["runs"]]
    if not runs:
        raise RuntimeError(f"{out_dir}/results.json has no finished final run")
    for r in runs:  # the weights each final run loaded are the ones this record names
        loaded = r.pop("backbone_weights_id")
        if weights_sha is not None and loaded != f"file:{weights_sha}":
            raise RuntimeError(f"{out_dir}: a final run loaded {loaded}, expected file:{weights_sha}")
    manifest = read_manifest(args.data_root, task)
    trials = [{k: t.get(k) for k in ("number", "state", "params", "value", "best_epoch", "val_curve", "error",
                                     "retry_of", "seconds")} for t in res["trials"]]
    r0 = runs[0]
    return {
        "benchmark": "transfer_sweep", "scale": args.scale, "tag": tag_of(setup, args.control), "setup": setup,
        "control": args.control, "task": task, "arm": arm, "epochs": args.epochs,
        "space_file": os.path.relpath(os.path.join(REPO, space_path(args, arm)), REPO),
        "space": res.get("space_given", res["space"]), "space_searched": res["space"],
        "extend_edges": args.extend_edges, "widened": res.get("widened", []),
        "sampler": res["sampler"], "pruner": res["pruner"], "budget": res["budget"],
        "pack": pack_of(args, setup, arm),
        "best": res["best"], "edge_warning": res["edge_warning"], "edges": res["edges"],
        "edge_ties": res.get("edge_ties", {}),
        "test_top1_mean": final["test_mean"], "test_top1_std": final["test_std"], "test_n": final["test_n"],
        "val_top1_mean": final["val_mean"], "final_runs": [{k: v for k, v in r.items() if k != "data"} for r in runs],
        "trainable_params": r0["trainable_params"], "total_params": r0["total_params"],
        "trainable_percent": 100.0 * r0["trainable_params"] / max(r0["total_params"], 1),
        "trial_counts": res["trial_counts"], "trials": trials,
        # every invocation of this sweep, from its log (a sweep killed and resumed counts every part)
        "wall_seconds": logged_wall_seconds(os.path.join(os.path.dirname(out_dir), f"{arm}.log"), res["study"])
        or wall,
        "backbone_weights_sha256": weights_sha,
        "data": {**r0["data"], "manifest_source_sha256": manifest.get("source_sha256"),
                 "licence": manifest.get("licence")},
        "command": res["command"],
        "driver_command": " ".join(shlex.quote(c) for c in [os.path.basename(cmd[0]), *cmd[1:]]),
        "sweep_command": " ".join(shlex.quote(c) for c in ["python", *sys.argv]),
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
    space = load_space(os.path.join(REPO, space_path(args, arm))).to_dict()
    if rec["epochs"] != args.epochs or rec.get("backbone_weights_sha256") != weights_sha or rec["space"] != space:
        raise SystemExit(f"error: {path} was made with other epochs, backbone weights or space; use another "
                         f"--scale for this sweep, or move the old record away")
    if record_edges(rec) and rec.get("extend_edges", 0) < args.extend_edges:
        return None  # its best lies on an edge, and it was made with fewer widening steps: its sweep goes on
    return rec


def record_edges(rec: dict) -> Dict[str, str]:
    """A record's edges ({field: 'low' | 'high'}) in the space it searched (widened past an edge, if it was),
    less an edge the best value ties with from inside the space (a plateau, e.g. a saturated val split;
    vpt.sweep.report.real_edges): recomputed, so records written before that rule agree."""
    if not rec.get("best"):
        return {}
    from vpt.sweep.report import real_edges
    from vpt.sweep.space import SearchSpace
    space = SearchSpace.from_dict(rec.get("space_searched") or rec["space"])
    return real_edges(space, rec["best"]["params"], rec["best"]["val"], rec["trials"])


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


# --- one sweep --------------------------------------------------------------------------------------------
def run_logged(cmd: List[str], out_dir: str, arm: str, threads: int) -> Tuple[int, float]:
    """Run one sweep process from the repo root with ``threads`` CPU threads, its output appended (after the
    command line) to ``<out_dir>/../<arm>.log``; (exit code, wall seconds). detection_transfer.py uses it too."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    with open(os.path.join(os.path.dirname(out_dir), f"{arm}.log"), "a", encoding="utf-8") as log:
        log.write(f"\n[{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}] {' '.join(map(shlex.quote, cmd))}\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        log.write(f"[{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}] exit {proc.returncode} after {wall:.1f} s\n")
    return proc.returncode, wall


_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d) ")  # vpt's log lines: "HH:MM:SS LEVEL logger: message"
_HEADER = re.compile(r"^\[\d{4}-\d\d-\d\dT(\d\d):(\d\d):(\d\d)Z\] ")  # run_logged's command line
_END = re.compile(r"^\[[^\]]+\] exit -?\d+ after (\d+(?:\.\d+)?) s$")  # run_logged's last line per invocation


def _clock(m: "re.Match") -> int:
    """Seconds since midnight of an HH:MM:SS match."""
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))


def logged_wall_seconds(log_path: str, study: str) -> Optional[float]:
    """Wall seconds a sweep has run over all its invocations, from its ``<arm>.log`` (run_logged appends one
    segment per invocation, opened by a ``[timestamp] command`` line and closed by ``[timestamp] exit N after S
    s``): the sum, over the segments from the last one that created ``study`` afresh (earlier ones belong to a
    sweep folder since discarded), of each one's S, or for a segment that has none (the driver was killed, or
    an older log) the time from its command line (or its first timestamped line) to its last timestamped line.
    So a sweep killed and resumed, or widened past an edge, counts every part. None if the log has no segment
    that created the study."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    segments: List[List[str]] = []
    for line in lines:
        if _END.match(line) and segments:
            segments[-1].append(line)
        elif line.startswith("[") and "] " in line:
            segments.append([line])
        elif segments:
            segments[-1].append(line)
    created = f"created study '{study}'"
    fresh = [i for i, seg in enumerate(segments) if any(line.endswith(created) for line in seg)]
    if not fresh:
        return None
    total = 0.0
    for seg in segments[fresh[-1]:]:
        ended = [float(m.group(1)) for m in map(_END.match, seg) if m]
        if ended:
            total += ended[-1]
            continue
        first = last = None
        for line in seg[1:]:
            m = _STAMP.match(line)
            if m:
                t = _clock(m)
                if last is not None:
                    while t < last:  # past midnight
                        t += 86400
                first = t if first is None else first
                last = t
        if first is not None:
            start = _HEADER.match(seg[0])  # the command line's UTC time: the startup before the first line
            if start:
                if 0 <= first - _clock(start) < 600:  # the log's clock is UTC too (else they differ by a zone)
                    first = _clock(start)
            total += last - first
    return float(total)


def run_cell(args, setup: str, task: str, arm: str) -> Optional[dict]:
    tag = tag_of(setup, args.control)
    path = record_path(args.out, args.scale, tag, task, arm)
    out_dir = sweep_dir(args, tag, task, arm)
    weights_sha = weights_for(args, setup)[1]
    study = f"{args.scale}-{tag}-{task}-{arm}"
    cmd = [sys.executable, os.path.relpath(__file__, REPO), "vpt-sweep",
           *sweep_args(args, setup, task, arm, out_dir, study)]
    name = f"{tag} {task} {arm}"
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    returncode, wall = run_logged(cmd, out_dir, arm, args.threads)
    if returncode != 0:
        print(f"  {name}: FAILED (exit {returncode}); see {os.path.dirname(out_dir)}/{arm}.log", flush=True)
        return None
    record = make_record(args, setup, task, arm, out_dir, cmd, wall, weights_sha)
    write_json(path, record)
    best = record["best"]
    print(f"  {name}: best {', '.join(f'{k}={v:g}' for k, v in best['params'].items())} (val {best['val']:.2f}); "
          f"test {record['test_top1_mean']:.2f} +/- {record['test_top1_std']:.2f} over {record['test_n']} seeds"
          f"{'; EDGE: ' + record['edge_warning'] if record['edge_warning'] else ''} (wall {wall:.0f}s)", flush=True)
    return record


def run(args) -> int:
    from transfer_data import read_manifest
    cells = parse_cells(args.cells, args.control)
    for t in sorted({t for _, t, _ in cells}):
        read_manifest(args.data_root, t)  # clear error if a task is not prepared
    todo = []
    for setup, task, arm in cells:
        tag = tag_of(setup, args.control)
        if load_record(record_path(args.out, args.scale, tag, task, arm), args, weights_for(args, setup)[1], arm):
            continue
        todo.append((setup, task, arm))
    print(f"{len(cells)} sweeps ({args.scale}, {args.epochs} epochs, {args.seeds} seeds, {args.jobs} at a time): "
          f"{len(cells) - len(todo)} done, {len(todo)} to run{' (dry run)' if args.dry_run else ''}", flush=True)
    for cell in todo if args.dry_run else ():
        print("  todo: " + " ".join(cell))
    if args.dry_run or not todo:
        return 0
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # submitted in order: the first cells run first
        futures = [pool.submit(run_cell, args, *cell) for cell in todo]
    failures = sum(f.result() is None for f in futures)
    print(f"done; {failures} failed sweeps (run the same command again to continue them)" if failures else "done")
    return 1 if failures else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vpt-sweep"]:
        return vpt_sweep(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run the sweeps (resumable; finished cells are skipped)")
    p.add_argument("--cells", action="append", required=True, metavar="SETUP:TASKS:ARMS",
                   help="repeatable, run in order; e.g. vit_tiny_cifar10:mnist,elpv:all or effnet_lite0:all:linear")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3, help="final runs of the best lr (seeds 0..K-1)")
    p.add_argument("--pack", type=int, default=7, help="trials per backbone pass for the frozen arms (1: off)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument("--extend-edges", type=int, default=2, metavar="N",
                   help="vpt sweep --extend-edges: widen an arm's grid past an edge holding its best lr, up to N "
                        "times (a record made with fewer steps whose best lies on an edge runs on)")
    p.add_argument("--control", action="store_true", help="random-init backbones (the control setups)")
    p.add_argument("--scale", default="e10", help="results sub-folder and label")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra override for every sweep, e.g. train.device=cuda")
    p.add_argument("--data-root", default=DATA_ROOT)
    p.add_argument("--sweeps-root", default=SWEEPS_ROOT, help="sweep folders (trials, study.db) outside the repo")
    p.add_argument("--out", default=SWEEP_RESULTS)
    p.add_argument("--effnet-weights", default=EFFNET_FILE)
    p.add_argument("--jobs", type=int, default=1, help="sweeps at a time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per sweep")
    p.add_argument("--dry-run", action="store_true", help="only list what is done and what would run")
    args = ap.parse_args(argv)
    args.data_root = os.path.expanduser(args.data_root)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
