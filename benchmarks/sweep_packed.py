"""Packed sweep trials vs the same trials one after another: a 16-setting lr x weight-decay grid, in ONE run.

    python benchmarks/sweep_packed.py --out benchmarks/results/sweep_packed_cpu.json               # CPU
    python benchmarks/sweep_packed.py --model timm:vit_base_patch16_224 --img 224 --depth 0 --batch 16 \
        --dtype bfloat16 --device cuda --out benchmarks/results/sweep_packed_cuda.json             # GPU

(``--depth 0`` keeps the model's own depth and width; the default shrinks it to 6 blocks of width 192.)

Per arm (head-only = linear probe, VPT-deep, VPT-deep on the last half of the blocks): the 16 settings
(SGD, 4 learning rates x 4 weight decays) train ``--steps`` optimizer steps on the same in-memory batches

- sequentially: 16 lone models (``vpt.tasks.classification.build_model``), each with its own optimizer;
- packed: ``vpt.sweep.packed.PackedClassifier`` with the 16 trials on one backbone and one optimizer
  whose parameter groups belong to one trial each.

Wall time of each (after one warm-up step per model), their ratio, peak memory (CUDA:
``max_memory_allocated`` of each mode alone; CPU: the peak RSS of a child process running that mode alone),
and the largest weight difference between packed and sequential trials after training (0 on the
reference block path; float rounding on the fast path, see tests/test_sweep_packed.py). Data loading,
which packing also shares in a real sweep, is left out: the batches are tensors in memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LRS = [0.5, 0.1, 0.02, 0.004]
WDS = [0.01, 0.001, 0.0001, 0.0]
ARMS = {"head_only": None, "vpt_deep": {"kind": "vpt_deep", "num_tokens": 10},
        "vpt_deep_last_half": {"kind": "vpt_deep", "num_tokens": 10, "last_k": "half"}}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _section(args, prompt):
    from vpt.tasks.classification import ModelSection
    if prompt and prompt.get("last_k") == "half":
        prompt = {**prompt, "last_k": args.depth // 2 if args.depth else 6}
    kw = {"img_size": args.img}
    if args.depth:
        kw.update(depth=args.depth, patch_size=args.patch, embed_dim=args.dim, num_heads=max(args.dim // 64, 1))
    return ModelSection(backbone={"name": args.model, "pretrained": False, "model_kwargs": kw}, prompt=prompt,
                        head={"kind": "linear", "pool": "cls"})


def _settings():
    from vpt.engine.config import OptimSection, SchedSection
    return [(OptimSection(opt="sgd", lr=lr, weight_decay=wd), SchedSection())
            for lr in LRS for wd in WDS]


def _batches(args, device):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(args.batch, 3, args.img, args.img, generator=g).to(device),
             torch.randint(0, args.classes, (args.batch,), generator=g).to(device)) for _ in range(args.steps)]


def _autocast(device, dtype):
    if dtype == torch.float32:
        import contextlib
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(args, arm: str, mode: str) -> Dict[str, Any]:
    """Train the 16 settings of ``arm`` sequentially or packed; seconds (after warm-up), peak memory, weights."""
    from vpt.engine.optim import build_optimizer_and_scheduler
    from vpt.sweep.packed import build_packed_model, build_packed_optimizer, packed_loss
    from vpt.tasks.classification import build_model
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    classes = [str(i) for i in range(args.classes)]
    section, settings, batches = _section(args, ARMS[arm]), _settings(), _batches(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    weights: List[Dict[str, torch.Tensor]] = []
    if mode == "sequential":
        models, opts = [], []
        for optim, sched in settings:
            torch.manual_seed(0)
            m = build_model(section, classes).to(device).train()
            models.append(m)
            opts.append(build_optimizer_and_scheduler(m, optim, sched, args.batch, args.steps, 1)[:2])

        def step(i: int, x, y) -> None:
            m, (opt, sch) = models[i], opts[i]
            with _autocast(device, dtype):
                loss = F.cross_entropy(m(x).float(), y, reduction="sum") / len(y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sch.step()
        for i in range(len(models)):  # warm-up: one step each, outside the clock
            step(i, *batches[0])
        _sync(device)
        start = time.perf_counter()
        for x, y in batches[1:]:
            for i in range(len(models)):
                step(i, x, y)
        _sync(device)
        seconds = time.perf_counter() - start
        weights = [m.trainable_state_dict() for m in models]
    else:
        torch.manual_seed(0)
        model = build_packed_model(section, classes, len(settings)).to(device).train()
        opt, sch, _ = build_packed_optimizer(model, [o for o, _ in settings], [s for _, s in settings], args.batch,
                                             args.steps, 1)
        smoothing = [0.0] * len(settings)

        def pstep(x, y) -> None:
            with _autocast(device, dtype):
                loss, _ = packed_loss(model(x), y, smoothing)
            (loss / len(y)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sch.step()
        pstep(*batches[0])
        _sync(device)
        start = time.perf_counter()
        for x, y in batches[1:]:
            pstep(x, y)
        _sync(device)
        seconds = time.perf_counter() - start
        weights = [model.trial_tensors(k) for k in range(len(settings))]
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    return {"seconds": seconds, "steps_timed": args.steps - 1, "peak_gib": peak,
            "weights": [{k: v.detach().float().cpu() for k, v in w.items()} for w in weights]}


def _child(args, arm: str, mode: str) -> Dict[str, Any]:
    """CPU: run one mode in its own process so its peak RSS is its own; returns its result (weights in a file)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.pt")
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child", f"{arm}:{mode}:{out}"]
        subprocess.run(cmd, check=True)
        return torch.load(out, weights_only=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="timm:vit_small_patch16_224")
    p.add_argument("--img", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--dim", type=int, default=192, help="with --depth: the ViT's width")
    p.add_argument("--depth", type=int, default=6, help="shrink the model to this many blocks (0: the model's own)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per setting (the first is a warm-up)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        arm, mode, out = args.child.split(":", 2)
        torch.save(run_mode(args, arm, mode), out)
        return
    rows = {}
    for arm in args.arms.split(","):
        res = {}
        for mode in ("sequential", "packed"):
            res[mode] = _child(args, arm, mode) if args.device == "cpu" else run_mode(args, arm, mode)
        diff = max(float((a[k] - b[k]).abs().max()) for a, b in zip(res["sequential"]["weights"], res["packed"]["weights"])
                   for k in a)
        rows[arm] = {"sequential_s": res["sequential"]["seconds"], "packed_s": res["packed"]["seconds"],
                     "speedup": res["sequential"]["seconds"] / res["packed"]["seconds"],
                     "sequential_peak_gib": res["sequential"]["peak_gib"], "packed_peak_gib": res["packed"]["peak_gib"],
                     "max_weight_diff": diff, "steps_timed": res["packed"]["steps_timed"]}
        print(f"{arm:>20}: sequential {rows[arm]['sequential_s']:.2f}s, packed {rows[arm]['packed_s']:.2f}s, "
              f"x{rows[arm]['speedup']:.2f}; peak {rows[arm]['sequential_peak_gib']:.2f} / "
              f"{rows[arm]['packed_peak_gib']:.2f} GiB; max weight diff {diff:.2g}", flush=True)
    from vpt.engine.trainer import device_name, versions
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "question": "16 sweep settings (4 lr x 4 wd): packed in one backbone pass vs one after another",
        "settings": {"lr": LRS, "weight_decay": WDS, "optimizer": "sgd"},
        "config": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "arms": rows,
        "device": device_name(torch.device(args.device)),
        "peak_memory": "CUDA max_memory_allocated" if args.device != "cpu" else "peak RSS of a process running one mode",
        "versions": versions(), "platform": platform.platform(),
    }
    if args.out:
        from vpt.io import atomic_write_json
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
