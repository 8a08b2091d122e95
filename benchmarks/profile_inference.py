"""Where inference (or, with ``--train``, training-step) time goes: one ``torch.profiler`` step per arm, the top
kernels by device time.

    python benchmarks/profile_inference.py --device cuda --out benchmarks/results/profile_inference_cuda.json
    python benchmarks/profile_inference.py --model timm:vit_tiny_patch16_224 --img 96 --batch 2 --device cpu
    python benchmarks/profile_inference.py --train --model timm:vit_small_patch16_224 --batch 8 --dtype float32 \
        --device cpu --arms full vpt_deep --steps 1 --profiled 3 --rows 20 --out benchmarks/results/profile_train_cpu.json

The plain timm model (``full``: the model with its own head) against vpt's prompted arms, built as
``speed.py`` builds them (random weights), in ``inference_mode`` under autocast. Per arm: the mean step
time of ``--steps`` steps after 3 warm-up steps, then one profiled step and its operator table sorted by
self device time (CUDA) or self CPU time. ``speed.py`` measures the ratios; this script says which
operators make them.

``--train``: the eager training step ``speed.py`` times (AdamW, cross-entropy, autocast) instead of inference,
and per arm the share of the profiled step in matmul / attention operators (``matmul_share``) against the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from speed import DTYPES, TrainStep, build_arm, sync  # noqa: E402

ARMS = ["full", "vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad"]


# operators that are the model's arithmetic (matmuls, attention, their backward); everything else is overhead
# a frozen backbone could do without (layout copies, casts, elementwise glue, the optimizer)
MATMUL_OPS = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_scaled_dot_product\w*|"
                        r"scaled_dot_product_attention|_efficient_attention\w*|_flash_attention\w*)$")


def matmul_share(prof, averages, key: str) -> float:
    """Share of the profiled step in matmul / attention operators: their self CPU time over all self CPU time
    (CPU); on CUDA the device time of the outermost such operators (the kernels they launch) over all kernels'."""
    total = sum(getattr(e, key) for e in averages)
    if key == "self_cpu_time_total":
        mm = sum(getattr(e, key) for e in averages if MATMUL_OPS.match(e.key))
    else:
        def outermost(e):
            p = e.cpu_parent
            while p is not None:
                if MATMUL_OPS.match(p.name):
                    return False
                p = p.cpu_parent
            return True
        mm = sum(e.device_time_total for e in prof.events() if MATMUL_OPS.match(e.name) and outermost(e))
    return mm / total if total else 0.0


def glue_ops(prof, rows: int) -> list:
    """The non-matmul operators of the profiled step grouped by name, input shapes and the operator or autograd
    node that called them (what a layout copy, cast or small op between blocks belongs to), by self CPU time."""
    groups = {}
    for e in prof.events():
        if MATMUL_OPS.match(e.name) or not e.name.startswith("aten::"):
            continue
        parents, p = [], e.cpu_parent
        while p is not None and len(parents) < 3:
            parents.append(p.name.replace("autograd::engine::evaluate_function: ", "backward "))
            p = p.cpu_parent
        k = (e.name, str(e.input_shapes[:2]), " < ".join(parents))
        g = groups.setdefault(k, {"name": k[0], "input_shapes": k[1], "called_from": k[2], "calls": 0,
                                  "self_cpu_time_total_us": 0.0})
        g["calls"] += 1
        g["self_cpu_time_total_us"] += e.self_cpu_time_total
    return sorted(groups.values(), key=lambda g: g["self_cpu_time_total_us"], reverse=True)[:rows]


def profile_arm(model: torch.nn.Module, x: torch.Tensor, amp, steps: int, rows: int, train: bool = False,
                profiled: int = 1) -> dict:
    dev = x.device
    if train:
        step = TrainStep(model, x, torch.arange(x.shape[0], device=dev) % 10, amp)
    else:
        def step():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                model(x)

    for _ in range(3):
        step()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    ms = (time.perf_counter() - t) * 1000 / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    totals, prof, averages = [], None, None
    for _ in range(profiled):  # the least disturbed of `profiled` steps (on a shared machine: the fewest preemptions)
        with profile(activities=activities, record_shapes=train) as p:
            step()
            sync(dev)
        avg = p.key_averages()
        totals.append(sum(getattr(e, key) for e in avg) / 1000)
        if totals[-1] == min(totals):
            prof, averages = p, avg
    top = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:rows]
    return {"mean_step_ms": ms, "profiled_step_ms": totals, "matmul_share": matmul_share(prof, averages, key),
            "top": [{"name": e.key, "calls": e.count, f"{key}_us": getattr(e, key)} for e in top],
            "table": averages.table(sort_by=key, row_limit=rows, max_name_column_width=70),
            **({"glue_cpu": glue_ops(prof, rows)} if train else {})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="timm:vit_base_patch16_224")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="autocast dtype (float32: none)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=10, help="prompt tokens (shallow, deep, prefix)")
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per arm (after 3 warm-up)")
    ap.add_argument("--rows", type=int, default=14, help="operators per table")
    ap.add_argument("--train", action="store_true", help="profile the eager training step instead of inference")
    ap.add_argument("--profiled", type=int, default=1, help="profiled steps per arm; the tables are the least "
                                                             "disturbed one's (the smallest total)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--out", default=None, help="JSON results file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    amp = None if args.dtype == "float32" else DTYPES[args.dtype]
    kw = {} if args.img == 224 else {"img_size": args.img}
    x = torch.randn(args.batch, 3, args.img, args.img, device=dev)
    arms = {}
    for arm in args.arms:
        model = build_arm(arm, args.model, 10, args.tokens, kw).to(dev)
        model = model.train() if args.train else model.eval()
        arms[arm] = profile_arm(model, x, amp, args.steps, args.rows, args.train, args.profiled)
        print(f"===== {arm}: {arms[arm]['mean_step_ms']:.2f} ms per step, matmul/attention "
              f"{arms[arm]['matmul_share']:.1%}\n{arms[arm]['table']}", flush=True)
        del model
    from vpt.version import source_commit
    import vpt
    result = {
        "command": " ".join(["python"] + sys.argv), "config": vars(args),
        "versions": {"vpt": vpt.__version__, "vpt_commit": source_commit(), "torch": torch.__version__,
                     "timm": __import__("timm").__version__, "python": platform.python_version()},
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "arms": arms,
    }
    if args.out:
        from vpt.io import atomic_write_text
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
