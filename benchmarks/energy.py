"""Energy of training: joules per step and per trained task, VPT-deep against full fine-tuning, in ONE run.

    python benchmarks/energy.py --model timm:vit_base_patch16_224 --batch 128 --dtype bfloat16 \
        --out $OUT/energy_cuda.json                                    # GPU (NVML energy counter)
    python benchmarks/energy.py --model timm:vit_tiny_patch16_224 --batch 2 --steps 2 --device cpu   # smoke

The GPU's own energy counter (NVML ``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver
loaded; via ``pynvml`` when installed, else libnvidia-ml through ctypes) is read around blocks of training
steps of each arm; arms alternate block by block (ABC ABC ...) so drifting clocks and temperature hit all
alike. Per arm: median step time, img/s, joules per step and per image, and joules per trained task:
``--task-steps`` optimizer steps (default 1600: a VTAB-1k task, 1000 images, 100 epochs at batch 64, VPT's
recipe, counted at this script's batch). ``vpt_deep_fp8`` (where ``train.fp8`` can run) is VPT-deep with
the frozen linears in FP8 (torchao). On a machine without NVML the joule fields are null and say why.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import vpt  # noqa: E402
from speed import DTYPES, TrainStep, build_arm, sync  # noqa: E402

ARMS = ["full", "linear", "vpt_deep", "vpt_deep_fp8"]


class EnergyCounter:
    """Millijoules consumed by GPU ``index`` since the driver loaded (NVML), or ``reason`` why there is none."""

    def __init__(self, index: int = 0):
        self.read: Optional[Callable[[], int]] = None
        self.source = self.reason = None
        try:
            import pynvml
            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.read = lambda: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(h))
            self.read()
            self.source = "pynvml nvmlDeviceGetTotalEnergyConsumption"
            return
        except Exception as e:  # noqa: BLE001 - fall back to the C library, then to no counter
            self.reason = f"pynvml: {type(e).__name__}: {e}"
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if lib.nvmlInit_v2() != 0:
                raise OSError("nvmlInit_v2 failed")
            h = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(h)) != 0:
                raise OSError(f"no NVML device {index}")

            def read() -> int:
                mj = ctypes.c_ulonglong()
                rc = lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(mj))
                if rc != 0:
                    raise OSError(f"nvmlDeviceGetTotalEnergyConsumption returned {rc} (not supported on this GPU?)")
                return int(mj.value)
            read()
            self.read, self.source = read, "libnvidia-ml nvmlDeviceGetTotalEnergyConsumption (ctypes)"
        except OSError as e:
            self.reason = f"{self.reason}; libnvidia-ml: {e}"


def build(arm: str, args, dev) -> torch.nn.Module:
    model = build_arm("vpt_deep" if arm == "vpt_deep_fp8" else arm, args.model, 10, args.tokens,
                      json.loads(args.model_kwargs)).to(dev)
    if arm == "vpt_deep_fp8":
        from vpt.engine.speedups import convert_fp8
        convert_fp8(model)
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="timm:vit_base_patch16_224")
    ap.add_argument("--model-kwargs", default="{}", help="JSON dict for the library's create function")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    ap.add_argument("--steps", type=int, default=20, help="training steps per block")
    ap.add_argument("--blocks", type=int, default=3, help="blocks per arm, interleaved across arms")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--task-steps", type=int, default=1600, help="optimizer steps of one trained task")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    amp = DTYPES[args.dtype] if args.dtype != "float32" else None
    counter = EnergyCounter(dev.index or 0) if dev.type == "cuda" else None
    skipped: Dict[str, str] = {}
    arms = list(args.arms)
    if "vpt_deep_fp8" in arms:
        from vpt.engine.speedups import fp8_refusal
        why = fp8_refusal(dev)
        if why:
            skipped["vpt_deep_fp8"] = why
            arms.remove("vpt_deep_fp8")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    x = torch.randn(args.batch, *vpt.create_backbone(
        args.model, pretrained=False, model_kwargs=json.loads(args.model_kwargs)).data_config().input_size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    steps: Dict[str, TrainStep] = {a: TrainStep(build(a, args, dev).train(), x, y, amp) for a in arms}
    for a, s in steps.items():
        for _ in range(args.warmup):
            s()
    times: Dict[str, List[float]] = {a: [] for a in steps}
    joules: Dict[str, List[float]] = {a: [] for a in steps}
    for _ in range(args.blocks):
        for a, s in steps.items():
            sync(dev)
            e0 = counter.read() if counter and counter.read else None
            t0 = time.perf_counter()
            for _ in range(args.steps):
                s()
            sync(dev)
            dt = time.perf_counter() - t0
            times[a].append(dt / args.steps)
            if e0 is not None:
                joules[a].append((counter.read() - e0) / 1000 / args.steps)
    rows = {}
    for a in steps:
        t = statistics.median(times[a])
        j = statistics.median(joules[a]) if joules[a] else None
        rows[a] = {"median_step_ms": 1000 * t, "img_per_s": args.batch / t,
                   "joules_per_step": j, "joules_per_image": j / args.batch if j is not None else None,
                   "joules_per_task": j * args.task_steps if j is not None else None,
                   "kwh_per_task": j * args.task_steps / 3.6e6 if j is not None else None,
                   "mean_power_w": j / t if j is not None else None,
                   "all_step_ms": [1000 * v for v in times[a]], "all_joules_per_step": joules[a]}
    for a, r in rows.items():
        for base in ("full",):
            if base in rows and a != base:
                r[f"img_per_s_ratio_to_{base}"] = r["img_per_s"] / rows[base]["img_per_s"]
                if r["joules_per_step"] is not None:
                    r[f"energy_ratio_to_{base}"] = r["joules_per_step"] / rows[base]["joules_per_step"]
    result = {
        "command": " ".join(["python"] + sys.argv), "config": vars(args),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu {platform.machine()}",
        "energy_source": counter.source if counter else None,
        "energy_unavailable": (None if counter and counter.read else
                               (counter.reason if counter else "not a CUDA device: no NVML energy counter")),
        "task_steps_assumption": "VTAB-1k: 1000 images x 100 epochs at batch 64 = 1600 steps (VPT's recipe)",
        "torch": torch.__version__, "arms": rows, "skipped": skipped,
    }
    for a, r in rows.items():
        j = r["joules_per_step"]
        print(f"{a:<14} {r['img_per_s']:9.1f} img/s  " + (f"{j:8.2f} J/step  {r['kwh_per_task']:.4f} kWh/task"
                                                        if j is not None else "energy n/a"))
    for a, why in skipped.items():
        print(f"{a}: skipped ({why})")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
