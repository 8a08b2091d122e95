"""Speed sanity: vpt's prompted training step versus the plain-PyTorch VPT recipe, in the same run.

The plain recipe is what users write today (docs/ARCHITECTURE.md, "Numbers to beat"): a hand loop over timm's blocks
that concatenates prompts at every layer with autograd on everywhere. vpt must not be slower.

    python benchmarks/speed_sanity.py --model vit_small_patch16_224 --batch 8 --steps 6 \
        --out benchmarks/results/speed_sanity_cpu.json

Random weights (speed does not depend on them). Recipes are timed interleaved (ABAB...) and reported as
medians, so background load hits both alike; compare the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import vpt  # noqa: E402
from vpt.version import source_commit  # noqa: E402


class PlainVPTDeep(nn.Module):
    """The plain-PyTorch VPT-deep recipe: the official VPT repo's loop, written against a timm ViT."""

    def __init__(self, vit: nn.Module, num_tokens: int, num_classes: int, deep: bool = True):
        super().__init__()
        self.vit = vit
        for p in vit.parameters():
            p.requires_grad_(False)
        depth = len(vit.blocks) if deep else 1
        self.prompts = nn.Parameter(torch.zeros(depth, num_tokens, vit.embed_dim).uniform_(-0.06, 0.06))
        self.head = nn.Linear(vit.embed_dim, num_classes)
        self.deep = deep

    def forward(self, x):
        v, P = self.vit, self.prompts.shape[1]
        h = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))
        B, k = h.shape[0], v.num_prefix_tokens
        for i, blk in enumerate(v.blocks):
            if i == 0:
                h = torch.cat([h[:, :k], self.prompts[0].expand(B, -1, -1), h[:, k:]], dim=1)
            elif self.deep:
                h = torch.cat([h[:, :k], self.prompts[i].expand(B, -1, -1), h[:, k + P:]], dim=1)
            h = blk(h)
        return self.head(v.norm(h)[:, 0])


def step_fn(model, x, y):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per recipe")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/speed_sanity_cpu.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    bb = vpt.create_backbone(f"timm:{args.model}", pretrained=False)
    size = bb.data_config().input_size
    x = torch.randn(args.batch, *size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    P = args.tokens
    recipes = {
        "plain_vpt_deep": PlainVPTDeep(bb.model, P, 10, deep=True),
        "vpt_deep": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": P}, num_classes=10, head={"pool": "cls"}),
        "plain_vpt_shallow": PlainVPTDeep(bb.model, P, 10, deep=False),
        "vpt_shallow": vpt.create_model(bb, prompt={"kind": "vpt_shallow", "num_tokens": P}, num_classes=10, head={"pool": "cls"}),
    }
    steps = {}
    for name, m in recipes.items():
        m.to(dev).train()
        if hasattr(m, "vit"):
            m.vit.eval()
        steps[name] = step_fn(m, x, y)
    times = {n: [] for n in recipes}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for it in range(args.warmup + args.steps):
        for name, step in steps.items():
            sync()
            t = time.perf_counter()
            step()
            sync()
            if it >= args.warmup:
                times[name].append(time.perf_counter() - t)
    med = {n: statistics.median(v) for n, v in times.items()}
    result = {
        "command": " ".join(["python"] + sys.argv),
        "config": vars(args),
        "versions": {"vpt": vpt.__version__, "vpt_commit": source_commit(),
                     "torch": torch.__version__, "python": platform.python_version()},
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],  # other work on the machine meanwhile
        "median_step_ms": {n: round(1000 * v, 1) for n, v in med.items()},
        "all_step_ms": {n: [round(1000 * t, 1) for t in v] for n, v in times.items()},
        "ratio_vpt_over_plain": {
            "vpt_deep": round(med["vpt_deep"] / med["plain_vpt_deep"], 3),
            "vpt_shallow": round(med["vpt_shallow"] / med["plain_vpt_shallow"], 3),
        },
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("device", "median_step_ms", "ratio_vpt_over_plain")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
