"""Write golden files from the reference repositories' own code, so the tests compare vpt to them without a
reference checkout (CI needs none).

    python benchmarks/reference_goldens.py --dassl /tmp/Dassl.pytorch --coop /tmp/CoOp [--output tests/data]

``--dassl``: a checkout of KaiyangZhou/Dassl.pytorch; its ``DatasetBase.generate_fewshot_dataset`` draws the
few-shot subsets (train, then val with min(shots, 4), one ``random`` stream seeded as Dassl's
``set_random_seed`` seeds it), for seeds 1-3 and several shot counts, from a small synthetic split (uneven
classes, labels in shuffled first-appearance order). ``--coop``: a checkout of KaiyangZhou/CoOp; its
``OxfordPets.subsample_classes`` (the one every CoOp dataset calls) splits base / new classes. The file
(``tests/data/dassl_fewshot.json``) records the split, each selection and both repositories' commits;
``tests/test_benchmarks.py`` checks that vpt's coop reader selects the same items.

``--maple``: a checkout of muzairkhattak/multimodal-prompt-learning; its ``clip/model.py``
``VisionTransformer_MaPLe`` (the image encoder with the first prompts appended before ``ln_pre`` and the deeper
ones replacing the last tokens) runs on a tiny open_clip ViT-B-32-quickgelu image tower (random init, seed in
the file, its sha256 recorded) with given prompts; ``tests/data/maple_vision.safetensors`` holds the inputs,
the prompts, the image features and their gradients (the reference casts prompts to fp16 with ``.half()``: the
prompts are fp16-representable so the forward is exact, the gradients pass through that cast and are fp16-rounded).

Only the modules holding those functions are loaded from the checkouts (``base_dataset.py``,
``datasets/oxford_pets.py``); their package-level imports that the functions never call (gdown downloads,
Dassl's registry, file checks on the synthetic paths) are stubbed, so the checkouts need no installation.
Nothing of them is copied into vpt.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import types

SEEDS = (1, 2, 3)
SHOTS = (1, 2, 4, 8)


def synthetic_split():
    """CoOp's split_zhou layout: {'train'|'val'|'test': [[relpath, label, classname], ...]}; uneven classes, the
    labels' first appearance not in label order (Dassl groups by first appearance)."""
    rng = random.Random(0)
    names = ["abyssinian", "beagle", "chihuahua", "dachshund", "egyptian_mau", "ferret", "goldfish"]
    split = {}
    for s, (lo, hi) in (("train", (8, 14)), ("val", (4, 7)), ("test", (2, 3))):
        items = []
        for y, c in enumerate(names):
            items += [[f"{c}/{s}_{c}_{i:02d}.jpg", y, c] for i in range(rng.randint(lo, hi))]
        rng.shuffle(items)
        split[s] = items
    return split


def _commit(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dassl(root: str):
    """Dassl's base_dataset module (Datum, DatasetBase) without installing Dassl."""
    path = os.path.join(root, "dassl", "data", "datasets", "base_dataset.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--dassl {root!r}: no dassl/data/datasets/base_dataset.py; pass a Dassl.pytorch checkout")
    sys.modules.setdefault("gdown", types.ModuleType("gdown"))  # downloads only
    utils = types.ModuleType("dassl.utils")
    utils.check_isfile = lambda p: True  # the synthetic paths need not exist
    utils.read_json = utils.write_json = utils.mkdir_if_missing = lambda *a, **k: None
    sys.modules.setdefault("dassl", types.ModuleType("dassl"))
    sys.modules["dassl.utils"] = utils
    return _load(path, "dassl_base_dataset")


def load_coop(root: str, base):
    path = os.path.join(root, "datasets", "oxford_pets.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--coop {root!r}: no datasets/oxford_pets.py; pass a CoOp checkout")
    registry = types.SimpleNamespace(register=lambda: (lambda cls: cls))
    datasets = types.ModuleType("dassl.data.datasets")
    datasets.DATASET_REGISTRY, datasets.Datum, datasets.DatasetBase = registry, base.Datum, base.DatasetBase
    sys.modules["dassl.data"] = types.ModuleType("dassl.data")
    sys.modules["dassl.data.datasets"] = datasets
    return _load(path, "coop_oxford_pets")


def dassl_goldens(dassl_root: str, coop_root: str) -> dict:
    base = load_dassl(dassl_root)
    pets = load_coop(coop_root, base)
    split = synthetic_split()
    to_datum = {s: [base.Datum(impath=p, label=y, classname=c) for p, y, c in split[s]] for s in split}
    helper = base.DatasetBase.__new__(base.DatasetBase)  # generate_fewshot_dataset uses no instance state
    cases = []
    for seed in SEEDS:
        for shots in SHOTS:
            random.seed(seed)  # what Dassl's set_random_seed(seed) does to `random` before the dataset is built
            train = helper.generate_fewshot_dataset(to_datum["train"], num_shots=shots)
            val = helper.generate_fewshot_dataset(to_datum["val"], num_shots=min(shots, 4))
            case = {"seed": seed, "shots": shots, "train": [d.impath for d in train], "val": [d.impath for d in val]}
            for sub in ("base", "new"):
                tr, va, te = pets.OxfordPets.subsample_classes(train, val, to_datum["test"], subsample=sub)
                case[sub] = {k: [[d.impath, d.label] for d in v] for k, v in (("train", tr), ("val", va), ("test", te))}
            cases.append(case)
    return {"about": "Dassl's generate_fewshot_dataset + CoOp's subsample_classes on a synthetic split "
                     "(benchmarks/reference_goldens.py)",
            "dassl_commit": _commit(dassl_root), "coop_commit": _commit(coop_root),
            "python": sys.version.split()[0], "split": split, "cases": cases}


MAPLE_TOWER = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=3, width=64, patch_size=8, head_width=32),
                   text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=3))
MAPLE_SEED, MAPLE_DEPTH, MAPLE_NCTX = 11, 2, 2


def maple_tower():
    """The tiny open_clip model both sides use (vpt's seeded random init)."""
    import vpt
    return vpt.create_backbone("open_clip:ViT-B-32-quickgelu", pretrained=False, init_seed=MAPLE_SEED,
                               model_kwargs=MAPLE_TOWER)


def maple_goldens(maple_root: str):
    import torch
    from vpt.backbones import state_sha256
    path = os.path.join(maple_root, "clip", "model.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--maple {maple_root!r}: no clip/model.py; pass a multimodal-prompt-learning checkout")
    ref_model = _load(path, "maple_clip_model")
    bb = maple_tower()
    visual = bb.model.visual
    v = MAPLE_TOWER["vision_cfg"]
    design = {"trainer": "MaPLe", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0,
              "maple_length": MAPLE_NCTX}
    ref = ref_model.VisionTransformer_MaPLe(v["image_size"], v["patch_size"], v["width"], v["layers"],
                                            v["width"] // v["head_width"], MAPLE_TOWER["embed_dim"], design)
    missing, unexpected = ref.load_state_dict(visual.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"the reference tower does not take open_clip's weights: missing {missing}, "
                         f"unexpected {unexpected}")
    ref.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, v["image_size"], v["image_size"], generator=g)
    prompts = [(0.5 * torch.randn(MAPLE_NCTX, v["width"], generator=g)).half().float().requires_grad_()
               for _ in range(MAPLE_DEPTH)]  # fp16-representable: the reference's .half() is exact on them
    feats = ref(x, prompts[0], prompts[1:])
    weights = torch.randn(feats.shape, generator=g)
    (feats * weights).sum().backward()
    tensors = {"x": x, "features": feats.detach(), "loss_weights": weights}
    for j, p in enumerate(prompts):
        tensors[f"prompt_{j}"] = p.detach()
        tensors[f"grad_{j}"] = p.grad
    meta = {"repo": "muzairkhattak/multimodal-prompt-learning", "commit": _commit(maple_root),
            "backbone": "open_clip:ViT-B-32-quickgelu", "init_seed": str(MAPLE_SEED),
            "model_kwargs": json.dumps(MAPLE_TOWER), "visual_sha256": state_sha256(visual),
            "depth": str(MAPLE_DEPTH), "num_tokens": str(MAPLE_NCTX),
            "loss": "sum(features * loss_weights); grads of the prompts (fp16-rounded by the reference's .half())"}
    return {k: t.contiguous() for k, t in tensors.items()}, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dassl", metavar="DIR", help="KaiyangZhou/Dassl.pytorch checkout")
    p.add_argument("--coop", metavar="DIR", help="KaiyangZhou/CoOp checkout")
    p.add_argument("--maple", metavar="DIR", help="muzairkhattak/multimodal-prompt-learning checkout")
    p.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    args = p.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    if args.dassl and args.coop:
        out = os.path.join(args.output, "dassl_fewshot.json")
        with open(out, "w") as f:
            json.dump(dassl_goldens(args.dassl, args.coop), f, separators=(",", ":"))
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    elif args.dassl or args.coop:
        p.error("pass --dassl DIR and --coop DIR together (the few-shot and base/new goldens need both)")
    if args.maple:
        from safetensors.torch import save_file
        tensors, meta = maple_goldens(args.maple)
        out = os.path.join(args.output, "maple_vision.safetensors")
        save_file(tensors, out, metadata=meta)
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    if not (args.dassl or args.maple):
        p.error("pass at least one reference checkout (--dassl with --coop, --maple)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
