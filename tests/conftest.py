import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

# Under pytest-xdist (the suite's default, one worker per core) each worker gets one thread, so workers
# don't oversubscribe the cores; a plain single-process run keeps up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

# A ViT small enough for CPU tests: 32 px, patch 8 -> 16 patches, width 32, 2 blocks.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_VIT_NAME = "timm:vit_tiny_patch16_224"


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


class TinyBackbones:
    """The backbone families of the contract matrix (timm ViT, DeiT distilled, Eva-02 with RoPE, the open_clip
    image tower, a timm CNN) as tiny random models: patch 8 (a (size/8)^2 grid), 2 heads, ``depth`` blocks.
    Iterates over the family keys; ``adapter(key)`` builds each once per instance (one per test module: tests
    may change a wrapped model in place, as prune_intermediate_layers does; ``forget(key)`` then)."""

    def __init__(self, size=32, width=32, depth=2, cnn=True):
        grid = size // 8
        vit = dict(img_size=size, patch_size=8, embed_dim=width, depth=depth, num_heads=2)
        clip = dict(embed_dim=width // 2, vision_cfg=dict(image_size=size, layers=depth, width=width, patch_size=8,
                                                           head_width=width // 2),
                    text_cfg=dict(context_length=77, vocab_size=49408, width=width, heads=2, layers=1))
        self.specs = {"vit": ("timm:vit_tiny_patch16_224", vit),
                      "deit_distilled": ("timm:deit_tiny_distilled_patch16_224", vit),
                      "eva02_rope": ("timm:eva02_tiny_patch14_224", dict(vit, ref_feat_shape=(grid, grid))),
                      "open_clip": ("open_clip:ViT-B-32", clip)}
        if cnn:
            self.specs["cnn"] = ("timm:resnet10t", dict(pretrained_cfg_overlay=dict(input_size=(3, size, size))))
        self._built = {}

    def __iter__(self):
        return iter(self.specs)

    def fresh(self, key):
        """A new adapter for family ``key`` (random init, seed 0)."""
        from vpt.backbones import create_backbone
        if key == "open_clip":
            pytest.importorskip("open_clip")
        name, kw = self.specs[key]
        return create_backbone(name, pretrained=False, init_seed=0, model_kwargs=dict(kw))

    def adapter(self, key):
        if key not in self._built:
            self._built[key] = self.fresh(key)
        return self._built[key]

    def forget(self, key):
        self._built.pop(key, None)


# the prompt kinds of the contract matrix, small
PROMPT_KINDS = {
    "none": None,
    "vpt_shallow": {"kind": "vpt_shallow", "num_tokens": 2},
    "vpt_deep": {"kind": "vpt_deep", "num_tokens": 2},
    "vpt_prefix": {"kind": "vpt_prefix", "num_tokens": 2},
    "pixel_pad": {"kind": "pixel_pad", "width": 4},
}


def prompt_supported(bb, prompt):
    """Whether backbone family ``bb`` takes prompt config ``prompt``: a CNN has no token sequence, Eva's RoPE
    attention no key/value prefixes (both refused when the model is built)."""
    kind = (prompt or {}).get("kind", "")
    return not ((bb == "cnn" and kind.startswith("vpt")) or (bb == "eva02_rope" and kind == "vpt_prefix"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster on a shared, busy CPU; restored after.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "data")


def tiny_recipe(path, **train):
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
