"""What the tests share besides fixtures: the backbone x prompt matrix (tiny random models), tiny image and
detection folders, and tiny recipes. ``import helpers`` (pyproject puts tests/ on the path); fixtures stay in
conftest.py."""
import importlib.util
import json
import os

import numpy as np
import yaml

# --- tiny models ----------------------------------------------------------------------------------------
# A ViT small enough for CPU tests: 32 px, patch 8 -> 16 patches, width 32, 2 blocks.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_VIT_NAME = "timm:vit_tiny_patch16_224"

# --- the backbone x prompt matrix -------------------------------------------------------------------------
# Every family as a tiny random model: 32 px, patch 8 (a 4x4 grid), width 32, 2 heads, 3 blocks (3 so that
# "prompted at blocks 0 and 2" leaves a gap, and the last block differs from the first prompted one).
_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
_CLIP = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=3, width=32, patch_size=8, head_width=16),
             text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
BACKBONES = {
    # the five families
    "vit": ("timm:vit_tiny_patch16_224", _VIT),
    "deit_distilled": ("timm:deit_tiny_distilled_patch16_224", _VIT),
    "eva02_rope": ("timm:eva02_tiny_patch14_224", dict(_VIT, ref_feat_shape=(4, 4))),
    "open_clip": ("open_clip:ViT-B-32", _CLIP),
    # zero-init residuals would hide the pixel prompts' border gradients
    "cnn": ("timm:resnet10t", dict(zero_init_last=False, pretrained_cfg_overlay=dict(input_size=(3, 32, 32)))),
    # timm ViT variants: register tokens without position embedding on the prefix, QK-norm and layer scale;
    # no class token (average pooling); attention pooling; any input size; Eva with mixed-mode RoPE
    "vit_reg": ("timm:vit_tiny_patch16_224", dict(_VIT, reg_tokens=2, no_embed_class=True, qk_norm=True,
                                                  init_values=0.5)),
    "vit_avg": ("timm:vit_tiny_patch16_224", dict(_VIT, class_token=False, global_pool="avg")),
    "vit_map": ("timm:vit_tiny_patch16_224", dict(_VIT, global_pool="map")),
    "vit_dynamic": ("timm:vit_tiny_patch16_224", dict(_VIT, dynamic_img_size=True)),
    "eva_rope_mixed": ("timm:vit_small_patch16_rope_mixed_224", dict(_VIT, init_values=1.0)),
}
FAMILIES = ("vit", "deit_distilled", "eva02_rope", "open_clip", "cnn")
if importlib.util.find_spec("open_clip") is None:  # the [test] extra installs it; without it, no CLIP rows
    del BACKBONES["open_clip"]
    FAMILIES = tuple(f for f in FAMILIES if f != "open_clip")

PROMPTS = {
    "none": None,
    "vpt_shallow": {"kind": "vpt_shallow", "num_tokens": 2},
    "vpt_deep": {"kind": "vpt_deep", "num_tokens": 2},
    "vpt_deep_last1": {"kind": "vpt_deep", "num_tokens": 2, "last_k": 1},
    # prompted at blocks 0 and 2 (not 1): the prompts leave the sequence mid-way
    "vpt_deep_gaps": {"kind": "vpt_deep", "num_tokens": 2, "layers": [0, 2]},
    "vpt_deep_proj": {"kind": "vpt_deep", "num_tokens": 2, "project_dim": 8, "dropout": 0.5},
    "vpt_prefix": {"kind": "vpt_prefix", "num_tokens": 2},
    "vpt_prefix_last1": {"kind": "vpt_prefix", "num_tokens": 2, "last_k": 1},
    "pixel_pad": {"kind": "pixel_pad", "width": 4},
    "pixel_patch": {"kind": "pixel_patch", "size": 8, "position": "random"},
}
# one prompt per kind: what the peer-library tests run
KINDS = ("none", "vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad")

# the vision PEFT methods (model.method, vpt.methods): one row each, with the settings the matrix runs
METHODS = {
    "adapter_houlsby": {"kind": "adapter", "placement": "houlsby", "bottleneck": 4},
    "adapter_pfeiffer": {"kind": "adapter", "placement": "pfeiffer", "bottleneck": 4},
    "adaptformer": {"kind": "adaptformer", "bottleneck": 4},
    "ssf": {"kind": "ssf", "init_std": 0.0},  # 0: the exact identity start (the paper's default is 0.02)
    "bitfit": {"kind": "bitfit"},
    "partial": {"kind": "partial", "last_k": 1},
    "fact": {"kind": "fact", "rank": 4, "dropout": 0.0},
    "convpass": {"kind": "convpass", "bottleneck": 4, "dropout": 0.0},
    "repadapter": {"kind": "repadapter", "bottleneck": 4, "groups": 2, "dropout": 0.0},
    "e2vpt": {"kind": "e2vpt", "num_kv": 2, "segments": 4},
}
# methods that fold into the backbone's weights (model.merge)
MERGEABLE = ("ssf", "bitfit", "fact", "repadapter")
# prompt + method combinations: the prompt a method's matrix row runs with (E2VPT adds to VPT token prompts)
METHOD_PROMPTS = {"e2vpt": "vpt_deep"}


def declared_refusal(adapter, prompt):
    """The refusal ``vpt.create_model(adapter, prompt=prompt)`` must raise, from what the two sides declare:
    the prompt kind's ``needs`` (tokens | kv | pixels | text, mapped to capabilities by ``PROMPT_NEEDS``)
    against the adapter's ``capabilities`` (None = supported, else the reason). Returns the fragments the
    error must name (the kind, the reason and the fix), or None when the pair must build."""
    from vpt.backbones.base import CAPABILITY_FIX, PROMPT_NEEDS
    from vpt.prompts import resolve_prompt_config
    cfg = resolve_prompt_config(prompt)
    if cfg is None:
        return None
    caps = adapter.capabilities
    for need in PROMPT_NEEDS[cfg.needs]:
        reason = getattr(caps, need)
        if reason is not None:
            return (f"prompt kind '{cfg.kind}'", reason, CAPABILITY_FIX[need])
    return None


class Matrix:
    """The backbone x prompt matrix: ``adapter(key)`` builds each family once (random init, seed 0) and
    shares it. Tests must not change a shared adapter in place; a test that does (pruning, unfreezing,
    ``.double()``) takes ``fresh(key)``. One instance per process (``MATRIX``), handed out by the
    session-scoped ``matrix`` fixture; parametrisations read it at collection time."""

    def __init__(self, backbones=BACKBONES, prompts=PROMPTS):
        self.backbones, self.prompts = backbones, prompts
        self._built = {}

    def fresh(self, key):
        """A new adapter for family ``key``."""
        from vpt.backbones import create_backbone
        name, kw = self.backbones[key]
        return create_backbone(name, pretrained=False, init_seed=0, model_kwargs=dict(kw))

    def adapter(self, key):
        if key not in self._built:
            self._built[key] = self.fresh(key)
        return self._built[key]

    def model(self, bb, prompt, seed=0, **kw):
        """``vpt.create_model`` on the shared adapter, prompts initialised under ``seed``."""
        import torch

        import vpt
        torch.manual_seed(seed)
        return vpt.create_model(self.adapter(bb), prompt=self.prompts[prompt], **kw)

    def refusal(self, bb, prompt):
        return declared_refusal(self.adapter(bb), self.prompts[prompt])

    def capable(self, bb, capability):
        """Whether family ``bb`` declares ``capability`` (a field of ``Capabilities``)."""
        value = getattr(self.adapter(bb).capabilities, capability)
        return value if isinstance(value, bool) else value is None

    def cases(self, backbones=None, prompts=None, refused=False):
        """(backbone, prompt) pairs to parametrise over: those that build (``refused=False``) or those the
        adapters' declared capabilities refuse (``refused=True``)."""
        return [(b, p) for b in (backbones or self.backbones) for p in (prompts or self.prompts)
                if (self.refusal(b, p) is not None) == refused]


MATRIX = Matrix()


# --- tiny image folders and recipes -------------------------------------------------------------------------
def make_image_folder(root, classes=("cat", "dog", "frog"), per_class=6, size=32, seed=0, fmt="png"):
    """Write a small image folder root/<class>/*.{fmt}; each class has its own colour so it is learnable."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for ci, c in enumerate(classes):
        d = os.path.join(root, c)
        os.makedirs(d, exist_ok=True)
        base = np.zeros(3)
        base[ci % 3] = 200
        for i in range(per_class):
            arr = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(os.path.join(d, f"{i:03d}.{fmt}"))
    return str(root)


def tiny_recipe(path, **train):
    """A recipe for the tiny ViT with VPT-deep; ``train`` overrides the train section."""
    cfg = {
        "model": {"backbone": {"name": TINY_VIT_NAME, "pretrained": False, "model_kwargs": dict(TINY_VIT)},
                  "prompt": {"kind": "vpt_deep", "num_tokens": 2}},
        "augment": {"scale": [0.6, 1.0]},
        "optim": {"opt": "adamw", "lr": 0.01},
        "sched": {"warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 8, "eval_batch_size": 16, "workers": 0, "log_interval": 2, **train},
    }
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


# --- tiny detection data (VOC / COCO folders of coloured squares) --------------------------------------
CLASSES = ("blue", "red")


def voc_xml(filename, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def scene(rng, size):
    """Dark noise with a red and a blue square at random places; returns image and [(class, box)]."""
    H, W = size
    img = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
    objs = []
    for name, ch in (("red", 0), ("blue", 2)):
        s = int(rng.integers(14, 22))
        x, y = int(rng.integers(0, W - s)), int(rng.integers(0, H - s))
        img[y:y + s, x:x + s, ch] = 230
        objs.append((name, (x, y, x + s, y + s)))
    return img, objs


def make_voc(root, n=8, size=(64, 64), seed=0, splits=None):
    """A tiny Pascal VOC folder: root/{Annotations,JPEGImages,ImageSets/Main}."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    ids = [f"img{i:03d}" for i in range(n)]
    truth = {}
    for i in ids:
        img, objs = scene(rng, size)
        Image.fromarray(img).save(os.path.join(root, "JPEGImages", f"{i}.png"))
        with open(os.path.join(root, "Annotations", f"{i}.xml"), "w") as f:
            f.write(voc_xml(f"{i}.png", size[1], size[0], objs))
        truth[i] = objs
    splits = splits or {"train": ids[: n - 4], "val": ids[n - 4: n - 2], "test": ids[n - 2:]}
    for name, lst in splits.items():
        with open(os.path.join(root, "ImageSets", "Main", f"{name}.txt"), "w") as f:
            f.write("\n".join(lst) + "\n")
    return str(root), truth


def make_coco(root, n=6, size=(64, 64), seed=1, splits=("train", "val")):
    """A tiny COCO folder: root/annotations/instances_<split>.json, images in root/<split>/."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    cats = [{"id": 3, "name": "red"}, {"id": 7, "name": "blue"}]
    cid = {"red": 3, "blue": 7}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split in splits:
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, objs = scene(rng, size)
            fn = f"{split}_{i}.png"
            Image.fromarray(img).save(os.path.join(root, split, fn))
            images.append({"id": 100 + i, "file_name": fn, "width": size[1], "height": size[0]})
            for name, (x1, y1, x2, y2) in objs:
                anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cid[name],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return str(root)


# --- tiny published-format benchmark folders (vpt.data.benchmarks) ------------------------------------------
def _tiny_image(path, label, rng, size=16):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    base = np.zeros(3)
    base[label % 3] = 60 + 60 * (label // 3 % 3)
    arr = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def make_vtab_task(root, name="patch_camelyon", labels=(0, 1), per_class=(3, 2, 2), seed=0):
    """A VTAB-1k task folder as NOAH prepares it: root/<name>/{train800,val200,train800val200,test}.txt with
    'images/<split>/<file>.jpg <label>' lines. per_class: images per class in train800, val200, test."""
    rng = np.random.default_rng(seed)
    task = os.path.join(root, name)
    lists = {}
    for split, n in zip(("train800", "val200", "test"), per_class):
        lines = []
        for y in labels:
            for i in range(n):
                rel = f"images/{split}/{y}_{i}.jpg"
                _tiny_image(os.path.join(task, rel), y, rng)
                lines.append(f"{rel} {y}")
        lists[split] = lines
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        with open(os.path.join(task, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return task


def make_fgvc(root, class_ids=(3, 7, 11), per_class=(3, 2, 2), seed=0):
    """An FGVC folder as KMnP/vpt prepares it: {train,val,test}.json mapping images/<path> to class ids."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), per_class):
        mapping = {}
        for j, cid in enumerate(class_ids):
            for i in range(n):
                rel = f"{cid:03d}.class/{split}_{i}.jpg"
                _tiny_image(os.path.join(root, "images", rel), j, rng)
                mapping[rel] = cid
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump(mapping, f)
    return str(root)


def make_coop(root, split=None, name="OxfordPets", images="images", classes=("abyssinian", "beagle", "chihuahua",
              "dachshund"), per_class=(4, 2, 2), seed=0):
    """A CoOp dataset folder: split_zhou_<name>.json ({split: [[relpath, label, classname]]}) + its images."""
    rng = np.random.default_rng(seed)
    if split is None:
        split = {s: [[f"{c}/{s}_{i}.jpg", y, c] for y, c in enumerate(classes) for i in range(n)]
                 for s, n in zip(("train", "val", "test"), per_class)}
    for items in split.values():
        for rel, y, _ in items:
            _tiny_image(os.path.join(root, images, rel), y, rng)
    with open(os.path.join(root, f"split_zhou_{name}.json"), "w") as f:
        json.dump(split, f)
    return str(root)


def perturb_trainable(model, scale: float = 0.05, seed: int = 1):
    """The model with its trainable tensors moved off their init (as after training), seeded."""
    import torch
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)
    return model


def train_eval_reload(cfg, data, tmp_path):
    """``vpt train`` on the recipe dict ``cfg`` (1 run), ``vpt eval`` of its best/ on val, then the artifact
    reloaded with ``vpt.from_pretrained``; each command must exit 0."""
    import vpt
    from vpt.cli import main
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "run")
    assert main(["train", "-c", str(recipe), "--data", data, "--output", out]) == 0
    assert main(["eval", os.path.join(out, "best"), "--data", data, "--split", "val"]) == 0
    return vpt.from_pretrained(os.path.join(out, "best"))

