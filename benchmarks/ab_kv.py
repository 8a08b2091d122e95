"""Before/after of the prompted-attention key/value join and the mixed-task projection, in ONE process.

    python benchmarks/ab_kv.py --model timm:vit_small_patch16_224 --batch 8 --out benchmarks/results/ab_kv_cpu.json

"before" swaps in the previous formulation at run time (the prompts' keys and values concatenated to the
sequence's strided halves separately in every block; a mixed batch projecting every sample's prompt tokens);
"after" is the code as it is. Each measurement runs before, after, before again (interleaved, ABA ABA ...),
so the two "before" medians bound the noise of the machine: ``noise`` is |before/before2 - 1|.

A timm Eva model (``--model timm:eva02_tiny_patch14_224``) had no fast blocks and no key/value prefixes before:
its "before" is the reference path (prompts in the sequence, the library's blocks), and only ``vpt_deep`` runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from contextlib import contextmanager
from typing import Callable, Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import vpt  # noqa: E402
import vpt.backbones.open_clip_vit as oc  # noqa: E402
import vpt.backbones.timm_eva as ev  # noqa: E402
import vpt.backbones.timm_vit as tv  # noqa: E402
from speed import TrainStep, build_arm, interleaved  # noqa: E402
from vpt.multitask import PromptMix  # noqa: E402


def two_cats(kv, pk=None, pv=None):
    """The previous join: keys and values, strided halves of kv, each concatenated on its own."""
    k, v = kv[..., :kv.shape[-1] // 2], kv[..., kv.shape[-1] // 2:]
    if pk is None:
        return k, v
    return torch.cat([pk.to(k.dtype), k], dim=1), torch.cat([pv.to(v.dtype), v], dim=1)


@contextmanager
def before():
    saved = tv.prefixed_kv, oc.prefixed_kv, PromptMix.token_table, ev.TimmEvaAdapter.supports_fast_blocks
    tv.prefixed_kv = oc.prefixed_kv = two_cats
    PromptMix.token_table = lambda self, i: None  # every sample's tokens projected, as before
    ev.TimmEvaAdapter.supports_fast_blocks = False  # Eva: prompts in the sequence, the library's blocks
    try:
        yield
    finally:
        tv.prefixed_kv, oc.prefixed_kv, PromptMix.token_table, ev.TimmEvaAdapter.supports_fast_blocks = saved


def ab(fn: Callable[[], object]) -> Dict[str, Callable[[], object]]:
    def old():
        with before():
            fn()
    return {"before": old, "after": fn, "before2": old}


def summarise(times: Dict[str, list], batch: int) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_ms": {k: 1000 * v for k, v in med.items()},
            "img_per_s": {k: batch / v for k, v in med.items()},
            "after_over_before_throughput": med["before"] / med["after"],
            "noise": abs(med["before"] / med["before2"] - 1),
            "all_ms": {k: [1000 * t for t in v] for k, v in times.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="timm:vit_small_patch16_224")
    ap.add_argument("--model-kwargs", default="{}", help="JSON dict for the library's create function")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    amp = None if args.dtype == "float32" else torch.bfloat16
    torch.manual_seed(0)
    kwargs = json.loads(args.model_kwargs)
    bb = vpt.create_backbone(args.model, pretrained=False, model_kwargs=kwargs)
    x = torch.randn(args.batch, *bb.data_config().input_size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    res = {"command": " ".join(["python"] + sys.argv), "config": vars(args),
           "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()], "torch": torch.__version__}
    arms = ("vpt_deep",) if isinstance(bb, ev.TimmEvaAdapter) else ("vpt_deep", "vpt_prefix")  # Eva: no prefix before
    models = {a: build_arm(a, args.model, 10, args.tokens, kwargs).to(dev) for a in arms}
    for a, m in models.items():
        step = TrainStep(m, x, y, amp)
        res[f"train_{a}"] = summarise(interleaved(ab(step), args.warmup, args.steps, dev), args.batch)
        print(a, "train", round(res[f"train_{a}"]["after_over_before_throughput"], 3), flush=True)
    for a, m in models.items():
        m.eval()
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            res[f"infer_{a}"] = summarise(interleaved(ab(lambda: m(x)), args.warmup, args.steps, dev), args.batch)
        print(a, "infer", round(res[f"infer_{a}"]["after_over_before_throughput"], 3), flush=True)
    if args.tasks:
        bb = vpt.create_backbone(args.model, pretrained=False, model_kwargs=kwargs).to(dev)
        tasks = {f"t{i}": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": args.tokens},
                                           num_classes=10).to(dev) for i in range(args.tasks)}
        mt = vpt.MultiTaskModel(tasks)
        order = torch.randperm(args.batch, generator=torch.Generator().manual_seed(0)).tolist()
        names = [f"t{i % args.tasks}" for i in order]
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            fns = {**ab(lambda: mt(x, names)), "single_task": lambda: tasks["t0"](x)}
            times = interleaved(fns, args.warmup, args.steps, dev)
        single = statistics.median(times.pop("single_task"))
        res["infer_mixed_tasks"] = summarise(times, args.batch)
        res["infer_mixed_tasks"]["mixed_over_single_throughput"] = {
            k: single / statistics.median(v) for k, v in times.items()}
        print("mixed", res["infer_mixed_tasks"]["after_over_before_throughput"],
              res["infer_mixed_tasks"]["mixed_over_single_throughput"], flush=True)
    if dev.type == "cuda":
        res["device"] = torch.cuda.get_device_name(dev)
    if args.out:
        from vpt.io import atomic_write_text
        atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
