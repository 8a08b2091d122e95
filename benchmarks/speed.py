"""Training and inference speed, peak memory and FLOP utilisation of every adaptation arm, in ONE process.

    python benchmarks/speed.py --model timm:vit_small_patch16_224 --batch 8 --dtype float32 \
        --out benchmarks/results/speed_cpu.json                       # CPU, 2 cores
    python benchmarks/speed.py --model timm:vit_base_patch16_224 --batch 128 --dtype bfloat16 \
        --device cuda --out benchmarks/results/speed_cuda.json          # GPU

Arms (random weights: speed does not depend on their values; each arm owns its own copy of the model):

- ``full``: the plain timm model + head, every weight trained (what users do without vpt);
- ``linear``: frozen backbone, head only (vpt, no prompt);
- ``lora``: peft LoRA r=8 on every block's qkv projection of the plain timm model, + head (needs peft);
- ``vpt_shallow``, ``vpt_deep``, ``vpt_prefix``, ``pixel_pad``: vpt's prompted models;
- ``vpt_deep_lean``, ``vpt_deep_lean50``: ``vpt_deep`` in lean mode (the MLPs' hidden activations are
  recomputed in backward) in every block / in every other block.
- the PEFT baselines (opt in with ``--arms``, or ``--arms methods`` for all): vpt's methods ``adapter``
  (Houlsby, bottleneck 8), ``adaptformer`` (bottleneck 64), ``ssf``, ``bitfit``, ``fact`` (rank 8),
  ``partial1`` (the last block), ``ssf_merged`` (SSF folded into the weights: the plain model's speed),
  ``convpass`` (bottleneck 8, beside attention and MLP), ``repadapter`` (bottleneck 8, 2 groups, before
  attention and MLP), ``repadapter_merged`` (folded into qkv / fc1), ``e2vpt`` (VPT-deep with ``--tokens``
  tokens + 5 key-value prompts per block), and
  peft's tuners through ``model.type: peft``: ``peft_ia3`` (qkv, fc2), ``peft_loha`` (r 8 on qkv),
  ``peft_dora`` (LoRA r 8 with DoRA on qkv).

Per arm: median training step (AdamW, cross-entropy; bf16/fp16 via autocast) timed interleaved with the
other arms (ABC ABC ...) so background load hits all alike; img/s; ratio to ``full``; peak memory of a
training step with only that arm resident (CUDA: ``max_memory_allocated``; CPU: the allocator's running
peak from the profiler's memory events, plus the parameters and optimizer state held before the step);
FLOPs of one step (``torch.utils.flop_counter``: the matmuls and attention actually executed, so frozen
arms are not credited with weight gradients they skip) and the utilisation of a matmul ceiling measured
in the same run. Inference img/s with and without prompts (and of each method arm run), and K tasks mixed in
one batch
(``vpt.MultiTaskModel``) versus one task and versus K separate passes. ``--compile`` adds compiled
variants and records recompilations and graph breaks.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import vpt  # noqa: E402
from vpt.version import source_commit  # noqa: E402

ALL_ARMS = ["full", "linear", "lora", "vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad", "vpt_deep_lean",
            "vpt_deep_lean50"]
# the PEFT baselines: vpt's methods (model.method) and peft's tuners (model.type: peft)
METHOD_ARMS = {
    "adapter": {"method": {"kind": "adapter", "bottleneck": 8}},
    "adaptformer": {"method": {"kind": "adaptformer", "bottleneck": 64}},
    "ssf": {"method": {"kind": "ssf"}},
    "ssf_merged": {"method": {"kind": "ssf"}, "merge": True},
    "bitfit": {"method": {"kind": "bitfit"}},
    "fact": {"method": {"kind": "fact", "rank": 8}},
    "partial1": {"method": {"kind": "partial", "last_k": 1}},
    "convpass": {"method": {"kind": "convpass", "bottleneck": 8}},
    "repadapter": {"method": {"kind": "repadapter", "bottleneck": 8}},
    "repadapter_merged": {"method": {"kind": "repadapter", "bottleneck": 8}, "merge": True},
    "e2vpt": {"method": {"kind": "e2vpt", "num_kv": 5}, "prompt": "vpt_deep"},
    "peft_ia3": {"peft": {"peft_type": "IA3", "target_modules": ["qkv", "fc2"]}},
    "peft_loha": {"peft": {"peft_type": "LOHA", "r": 8, "target_modules": ["qkv"]}},
    "peft_dora": {"peft": {"peft_type": "LORA", "r": 8, "use_dora": True, "target_modules": ["qkv"]}},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --- arms ---------------------------------------------------------------------------------------------
class PlainClassifier(nn.Module):
    """The library model with its own head: the full fine-tuning and LoRA baselines."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def build_arm(arm: str, backbone_name: str, num_classes: int, tokens: int, model_kwargs: dict) -> nn.Module:
    bb = vpt.create_backbone(backbone_name, pretrained=False, model_kwargs=model_kwargs)
    if arm in METHOD_ARMS:
        spec = METHOD_ARMS[arm]
        if "peft" in spec:
            from vpt.peft_model import PeftClassifier
            return PeftClassifier(bb, peft=spec["peft"], num_classes=num_classes)
        prompt = {"kind": spec["prompt"], "num_tokens": tokens} if spec.get("prompt") else None
        model = vpt.create_model(bb, prompt=prompt, num_classes=num_classes, method=spec["method"])
        if spec.get("merge"):
            model.merge()  # trains nothing of the method any more: inference speed is the point
        return model
    if arm in ("full", "lora"):
        lib = bb.model
        if not hasattr(lib, "reset_classifier"):
            raise SystemExit(f"--model {backbone_name}: the full / lora arms need a timm model")
        lib.reset_classifier(num_classes)
        for p in lib.parameters():
            p.requires_grad_(arm == "full")
        if arm == "lora":
            from peft import LoraConfig, inject_adapter_in_model
            inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=["qkv"], bias="none"), lib)
            for n, p in lib.named_parameters():
                p.requires_grad_("lora_" in n or n.startswith("head."))
        return PlainClassifier(lib)
    prompt = {
        "linear": None,
        "vpt_shallow": {"kind": "vpt_shallow", "num_tokens": tokens},
        "vpt_deep": {"kind": "vpt_deep", "num_tokens": tokens},
        "vpt_deep_lean": {"kind": "vpt_deep", "num_tokens": tokens},
        "vpt_deep_lean50": {"kind": "vpt_deep", "num_tokens": tokens},
        "vpt_prefix": {"kind": "vpt_prefix", "num_tokens": tokens},
        "pixel_pad": {"kind": "pixel_pad", "width": 30},
    }[arm]
    model = vpt.create_model(bb, prompt=prompt, num_classes=num_classes)
    if "_lean" in arm:
        model.set_lean(0.5 if arm.endswith("50") else 1.0)
    return model


class TrainStep:
    """One AdamW training step on a fixed batch."""

    def __init__(self, model: nn.Module, x, y, amp: Optional[torch.dtype]):
        self.model, self.x, self.y, self.amp = model, x, y, amp
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.x.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


# --- measurements -------------------------------------------------------------------------------------
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def state_bytes(step: TrainStep) -> int:
    """Parameters (all) + optimizer state held between steps."""
    total = sum(p.numel() * p.element_size() for p in step.model.parameters())
    for st in step.opt.state.values():
        total += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    return total


def peak_step_memory(step: TrainStep, dev: torch.device) -> Dict[str, float]:
    """Peak bytes of one training step, everything of this arm included (params, optimizer, activations)."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        sync(dev)
        return {"peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20, "method": "cuda.max_memory_allocated"}
    from torch.profiler import ProfilerActivity, profile
    held = state_bytes(step)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return {"peak_mib": (held + peak) / 2**20, "method": "params+optimizer state + profiler allocator peak"}


def step_flops(model: nn.Module, x, y, amp) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_ceiling(dev: torch.device, dtype: torch.dtype, sizes: List[int], reps: int = 5) -> Dict[str, float]:
    """Best FLOP/s of square matmuls in this dtype: the ceiling utilisation is measured against."""
    best = {}
    for n in sizes:
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        for _ in range(2):
            a @ b
        ts = []
        for _ in range(reps):
            sync(dev)
            t = time.perf_counter()
            a @ b
            sync(dev)
            ts.append(time.perf_counter() - t)
        best[n] = 2 * n**3 / min(ts)
    n = max(best, key=best.get)
    return {"flops_per_s": best[n], "size": n, "all": {str(k): v for k, v in best.items()}}


def interleaved(fns: Dict[str, Callable], warmup: int, steps: int, dev: torch.device) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {n: [] for n in fns}
    for it in range(warmup + steps):
        for name, fn in fns.items():
            sync(dev)
            t = time.perf_counter()
            fn()
            sync(dev)
            if it >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


# --- main ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="timm:vit_small_patch16_224")
    ap.add_argument("--model-kwargs", default="{}", help="JSON dict for the library's create function")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32", help="autocast dtype (float32: none)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=10, help="prompt tokens (shallow, deep, prefix)")
    ap.add_argument("--arms", nargs="+", default=ALL_ARMS, choices=ALL_ARMS + list(METHOD_ARMS) + ["methods"],
                    help="arms to run; 'methods': every PEFT baseline (with full and linear to compare)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per arm")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--infer-steps", type=int, default=8)
    ap.add_argument("--tasks", type=int, default=8, help="K tasks for the mixed-batch benchmark (0: skip)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd full and vpt_deep")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--out", default=None, help="JSON results file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    amp = None if args.dtype == "float32" else DTYPES[args.dtype]
    kwargs = json.loads(args.model_kwargs)
    arms = list(args.arms)
    if "methods" in arms:
        arms = list(dict.fromkeys(["full", "linear", "lora"] + [a for a in arms if a != "methods"] + list(METHOD_ARMS)))
    if "lora" in arms:
        try:
            import peft  # noqa: F401
        except ImportError:
            print("peft is not installed: skipping the lora and peft_* arms (pip install peft)", file=sys.stderr)
            arms = [a for a in arms if a != "lora" and not a.startswith("peft_")]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    models = {a: build_arm(a, args.model, 10, args.tokens, kwargs) for a in arms}
    data_cfg = vpt.create_backbone(args.model, pretrained=False, model_kwargs=kwargs).data_config()
    x = torch.randn(args.batch, *data_cfg.input_size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    total_params = {}
    for a, m in models.items():
        m.train()
        total_params[a] = (sum(p.numel() for p in m.parameters() if p.requires_grad), sum(p.numel() for p in m.parameters()))

    # 1) memory and FLOPs: one arm on the device at a time
    memory, flops = {}, {}
    for a, m in models.items():
        m.to(dev)
        step = TrainStep(m, x, y, amp)
        for _ in range(2):
            step()  # optimizer state exists, caches are warm
        memory[a] = peak_step_memory(step, dev)
        flops[a] = step_flops(m, x, y, amp)
        if dev.type == "cuda":
            m.to("cpu")
        print(f"[memory] {a}: {memory[a]['peak_mib']:.0f} MiB, {flops[a] / 1e9:.1f} GFLOP/step", file=sys.stderr)

    # 2) training speed, all arms resident, interleaved
    for m in models.values():
        m.to(dev)
    steps = {a: TrainStep(m, x, y, amp) for a, m in models.items()}
    compile_info = {}
    if args.compile:
        import torch._dynamo as dynamo
        for a in [a for a in ("full", "vpt_deep") if a in models]:
            cm = copy.deepcopy(models[a])
            dynamo.reset()
            compiled = torch.compile(cm)
            steps[a + "_compiled"] = TrainStep(compiled, x, y, amp)
            t = time.perf_counter()
            for _ in range(3):
                steps[a + "_compiled"]()
            compile_info[a] = {"first_3_steps_s": time.perf_counter() - t}
        compile_info["dynamo_counters"] = {k: dict(v) for k, v in dynamo.utils.counters.items()
                                           if k in ("stats", "graph_break", "recompiles")}
    times = interleaved(steps, args.warmup, args.steps, dev)
    med = {a: statistics.median(v) for a, v in times.items()}
    ceiling = matmul_ceiling(dev, DTYPES[args.dtype] if amp else torch.float32,
                             [1024, 2048] if dev.type == "cpu" else [4096, 8192])
    train = {}
    for a, t in med.items():
        base = a.replace("_compiled", "")
        row = {"median_step_ms": 1000 * t, "img_per_s": args.batch / t,
               "step_ratio_to_full": t / med["full"] if "full" in med else None,
               "img_per_s_ratio_to_full": med["full"] / t if "full" in med else None,
               "trainable_params": total_params[base][0], "total_params": total_params[base][1]}
        if base in flops:
            row["gflop_per_step"] = flops[base] / 1e9
            row["utilisation_of_matmul_ceiling"] = flops[base] / t / ceiling["flops_per_s"]
        if a in memory:
            row["peak_memory_mib"] = memory[a]["peak_mib"]
            row["memory_ratio_to_full"] = memory[a]["peak_mib"] / memory["full"]["peak_mib"] if "full" in memory else None
        row["all_step_ms"] = [1000 * s for s in times[a]]
        train[a] = row

    # 3) inference: plain library model vs prompted
    for m in models.values():
        m.eval()
    infer_fns: Dict[str, Callable] = {}
    plain = models.get("full")
    if plain is not None:
        infer_fns["plain"] = lambda: plain(x)
    for a in ("linear", "vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad", *METHOD_ARMS):
        if a in models:
            infer_fns[a] = (lambda m: (lambda: m(x)))(models[a])
    with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        itimes = interleaved(infer_fns, 2, args.infer_steps, dev)
    imed = {a: statistics.median(v) for a, v in itimes.items()}
    inference = {a: {"median_ms": 1000 * t, "img_per_s": args.batch / t,
                     "ratio_to_plain": imed["plain"] / t if "plain" in imed else None} for a, t in imed.items()}

    # 4) K tasks in one batch
    multitask = None
    if args.tasks:
        K = args.tasks
        bb = vpt.create_backbone(args.model, pretrained=False, model_kwargs=kwargs).to(dev)
        torch.manual_seed(1)
        tasks = {f"t{i}": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": args.tokens},
                                           num_classes=10).to(dev) for i in range(K)}
        mt = vpt.MultiTaskModel(tasks)
        names = [f"t{i % K}" for i in range(args.batch)]
        order = torch.randperm(args.batch, generator=torch.Generator().manual_seed(0)).tolist()
        names = [names[i] for i in order]
        single = tasks["t0"]
        groups = {n: [i for i, m in enumerate(names) if m == n] for n in dict.fromkeys(names)}

        def separate():
            return [tasks[n](x[rows]) for n, rows in groups.items()]
        fns = {"single_task": lambda: single(x), "mixed_one_batch": lambda: mt(x, names),
               "separate_passes": separate}
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            mtimes = interleaved(fns, 2, args.infer_steps, dev)
        mmed = {a: statistics.median(v) for a, v in mtimes.items()}
        multitask = {"tasks": K, "batch": args.batch,
                     **{a: {"median_ms": 1000 * t, "img_per_s": args.batch / t} for a, t in mmed.items()},
                     "mixed_over_single_throughput": mmed["single_task"] / mmed["mixed_one_batch"],
                     "mixed_over_separate_throughput": mmed["separate_passes"] / mmed["mixed_one_batch"]}

    result = {
        "command": " ".join(["python"] + sys.argv),
        "config": vars(args),
        "versions": {"vpt": vpt.__version__, "vpt_commit": source_commit(),
                     "torch": torch.__version__, "timm": __import__("timm").__version__,
                     "python": platform.python_version()},
        "device": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                   else f"cpu {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"),
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
        "matmul_ceiling": ceiling,
        "train": train,
        "memory_method": next(iter(memory.values()))["method"] if memory else None,
        "inference": inference,
        "multitask": multitask,
        "compile": compile_info or None,
    }
    print(summary(result))
    if args.out:
        from vpt.io import atomic_write_text
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def summary(r: dict) -> str:
    lines = [f"device: {r['device']}, ceiling {r['matmul_ceiling']['flops_per_s'] / 1e12:.3f} TFLOP/s",
             f"{'arm':<22}{'step ms':>9}{'img/s':>9}{'x full':>8}{'mem MiB':>9}{'mem/full':>9}{'util':>7}"]
    for a, row in r["train"].items():
        lines.append(f"{a:<22}{row['median_step_ms']:9.1f}{row['img_per_s']:9.1f}"
                     f"{(row['step_ratio_to_full'] or 0):8.3f}{row.get('peak_memory_mib', float('nan')):9.0f}"
                     f"{(row.get('memory_ratio_to_full') or float('nan')):9.3f}"
                     f"{row.get('utilisation_of_matmul_ceiling', float('nan')):7.3f}")
    lines.append("inference img/s (ratio to plain): " + ", ".join(
        f"{a} {v['img_per_s']:.1f} ({(v['ratio_to_plain'] or 0):.3f})" for a, v in r["inference"].items()))
    if r["multitask"]:
        m = r["multitask"]
        lines.append(f"{m['tasks']} tasks mixed: {m['mixed_one_batch']['img_per_s']:.1f} img/s; "
                     f"x single task {m['mixed_over_single_throughput']:.3f}, "
                     f"x separate passes {m['mixed_over_separate_throughput']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
