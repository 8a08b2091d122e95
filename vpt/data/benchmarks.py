"""The published benchmark formats, read as they are distributed:

- ``vtab1k``: VTAB-1k as NOAH / PETL_Vision prepare it, one folder per task:
  ``<task>/{train800,val200,train800val200,test}.txt``, each line ``images/<split>/<name>.jpg <label>``
  (split on the last space, the path relative to the task folder). The folder's name must be one of the 19
  tasks (``VTAB_TASKS``), whose class counts are known.
- ``fgvc``: FGVC as KMnP/vpt prepares it: ``{train,val,test}.json`` mapping an image path (relative to the
  folder, or to its ``images/``) to a class id; ids are remapped to sorted contiguous labels.
- ``coop``: CoOp's datasets: ``split_zhou_<Name>.json`` (``{"train"|"val"|"test": [[relpath, label,
  classname], ...]}``) next to the dataset's image folder; FGVCAircraft's ``variants.txt`` +
  ``images_variant_{train,val,test}.txt``; ImageNet's ``classnames.txt`` + ``images/{train,val}/<wnid>/``.
  Few-shot subsets are drawn exactly as Dassl's ``DatasetBase.generate_fewshot_dataset`` draws them (train,
  then val with ``min(shots, 4)``, from one ``random`` stream seeded with the seed), and base-to-novel keeps
  the first ``ceil(n / 2)`` labels (CoOp's ``subsample_classes``), after the few-shot draw.

Two protocols (``data.benchmark_split``): ``final`` trains on train + val (VTAB: ``train800val200.txt``) and
reports test after the last epoch, as the papers' final numbers; ``tune`` trains on train (``train800.txt``)
and selects the epoch (or a sweep's setting) on val (``val200.txt``). CoOp's few-shot runs sample train and val
as Dassl does; ``final`` leaves val out of model selection (CoOp reports the last epoch).
"""
from __future__ import annotations

import difflib
import glob
import json
import math
import os
import random
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DataError

Sample = Tuple[str, int]
FORMATS = ("auto", "folder", "csv", "vtab1k", "fgvc", "coop")
BENCHMARK_SPLITS = ("final", "tune")

# VTAB-1k: task folder (NOAH / PETL_Vision names) -> (group, number of classes)
VTAB_TASKS: Dict[str, Tuple[str, int]] = {
    "cifar": ("natural", 100), "caltech101": ("natural", 102), "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102), "oxford_iiit_pet": ("natural", 37), "svhn": ("natural", 10),
    "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2), "eurosat": ("specialized", 10), "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8), "clevr_dist": ("structured", 6), "dmlab": ("structured", 6),
    "kitti": ("structured", 4), "dsprites_loc": ("structured", 16), "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18), "smallnorb_ele": ("structured", 9),
}
VTAB_GROUPS = ("natural", "specialized", "structured")
VTAB_LISTS = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")

# FGVC as KMnP/vpt names the folders -> number of classes
FGVC_TASKS: Dict[str, int] = {"CUB_200_2011": 200, "nabirds": 555, "OxfordFlower": 102, "Stanford-dogs": 120,
                              "Stanford-cars": 196}

# CoOp's 11 datasets: folder (CoOp's DATA layout) -> (split file or None, image folder inside it)
COOP_DATASETS: Dict[str, Tuple[Optional[str], str]] = {
    "imagenet": (None, "images"), "caltech-101": ("split_zhou_Caltech101.json", "101_ObjectCategories"),
    "oxford_pets": ("split_zhou_OxfordPets.json", "images"), "stanford_cars": ("split_zhou_StanfordCars.json", ""),
    "oxford_flowers": ("split_zhou_OxfordFlowers.json", "jpg"), "food-101": ("split_zhou_Food101.json", "images"),
    "fgvc_aircraft": (None, "images"), "sun397": ("split_zhou_SUN397.json", "SUN397"),
    "dtd": ("split_zhou_DescribableTextures.json", "images"), "eurosat": ("split_zhou_EuroSAT.json", "2750"),
    "ucf101": ("split_zhou_UCF101.json", "UCF-101-midframes"),
}

# The hand-crafted prompt of each CoOp dataset in the papers' code, by Dassl's DATASET.NAME (data facts, '{c}' for
# the class name): CoOp's zero-shot CLIP baseline (KaiyangZhou/CoOp@ff61507 trainers/zsclip.py, CUSTOM_TEMPLATES)
# and KgCoOp's knowledge-guided text (htyao89/KgCoOp@c43ccc3 KgCoOp/trainers/kgcoop.py, CUSTOM_TEMPLATES). They
# differ only on DescribableTextures. CoCoOp and MaPLe use no hand-crafted text; PromptSRC uses its 60 templates on
# every dataset.
COOP_ZEROSHOT_TEMPLATES: Dict[str, str] = {
    "OxfordPets": "a photo of a {c}, a type of pet.", "OxfordFlowers": "a photo of a {c}, a type of flower.",
    "FGVCAircraft": "a photo of a {c}, a type of aircraft.", "DescribableTextures": "{c} texture.",
    "EuroSAT": "a centered satellite photo of {c}.", "StanfordCars": "a photo of a {c}.",
    "Food101": "a photo of {c}, a type of food.", "SUN397": "a photo of a {c}.", "Caltech101": "a photo of a {c}.",
    "UCF101": "a photo of a person doing {c}.", "ImageNet": "a photo of a {c}.",
}
KGCOOP_TEMPLATES: Dict[str, str] = dict(COOP_ZEROSHOT_TEMPLATES,
                                        DescribableTextures="a photo of a {c}, a type of texture.")


def did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def detect_format(root: str) -> str:
    """The format of the data at ``root``: vtab1k | fgvc | coop | csv | folder."""
    if os.path.isfile(root):
        return "csv"
    if not os.path.isdir(root):
        return "folder"  # the folder reader names the missing path
    names = set(os.listdir(root))
    if names & {"train800val200.txt", "train800.txt"}:
        return "vtab1k"
    if {"train.json", "test.json"} <= names:
        return "fgvc"
    if (any(n.startswith("split_zhou_") and n.endswith(".json") for n in names)
            or {"variants.txt", "images_variant_train.txt"} <= names or "classnames.txt" in names):
        return "coop"
    return "folder"


def _check_file(path: str, where: str, what: str = "image") -> None:
    if not os.path.isfile(path):
        raise DataError(f"{where} names {path!r}, which does not exist; restore the {what} or regenerate the list "
                        f"with the script that made it (docs/benchmarks.md)")


def _no_duplicates(items: Sequence[Tuple[str, int]], where: str) -> None:
    seen = set()
    for p, _ in items:
        if p in seen:
            raise DataError(f"{where} lists {p!r} twice; a split lists each image once (a repeated line weights "
                            f"it twice and may leak it across splits): remove the repeated line")
        seen.add(p)


# --- VTAB-1k ---------------------------------------------------------------------------------------
def read_vtab_list(path: str, task_dir: str, num_classes: int, check_files: bool = True) -> List[Sample]:
    """One NOAH list file -> [(absolute path, label)]; every line ``relpath label``, split on the last space."""
    where = os.path.basename(path)
    if not os.path.isfile(path):
        raise DataError(f"VTAB-1k task folder {task_dir!r} has no {where}; it needs {', '.join(VTAB_LISTS)} "
                        f"(NOAH's / PETL_Vision's preparation script writes them: docs/benchmarks.md)")
    out: List[Sample] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            rel, sep, lab = line.rpartition(" ")
            if not sep or not rel.strip():
                raise DataError(f"{path}:{n}: expected 'images/<split>/<name>.jpg <label>', got {line[:80]!r}")
            try:
                y = int(lab)
            except ValueError:
                raise DataError(f"{path}:{n}: the label {lab!r} is not an integer; each line is "
                                f"'<path> <label>'") from None
            if not 0 <= y < num_classes:
                raise DataError(f"{path}:{n}: label {y} is outside the task's {num_classes} classes (0..{num_classes - 1}); "
                                f"is this the right task folder? (its name says {os.path.basename(task_dir)!r})")
            p = os.path.join(task_dir, rel.strip())
            if check_files:
                _check_file(p, f"{path}:{n}")
            out.append((p, y))
    if not out:
        raise DataError(f"{path} lists no images; regenerate it with the preparation script")
    _no_duplicates(out, path)
    return out


def vtab_task(root: str) -> Tuple[str, str, int]:
    """(task name, group, number of classes) of a VTAB-1k task folder, by the folder's name."""
    name = os.path.basename(os.path.normpath(root))
    if name not in VTAB_TASKS:
        raise DataError(f"{root!r} is a VTAB-1k task folder (it has train800val200.txt) but {name!r} is not one of "
                        f"the 19 tasks{did_you_mean(name, VTAB_TASKS)}; name the folder after its task: "
                        f"{', '.join(VTAB_TASKS)}")
    group, n = VTAB_TASKS[name]
    return name, group, n


def read_vtab(root: str, benchmark_split: str = "final", check_files: bool = True):
    name, _, n = vtab_task(root)
    lists = {f: os.path.join(root, f) for f in VTAB_LISTS}
    if benchmark_split == "final":
        train = read_vtab_list(lists["train800val200.txt"], root, n, check_files)
        val: List[Sample] = []
    else:
        train = read_vtab_list(lists["train800.txt"], root, n, check_files)
        val = read_vtab_list(lists["val200.txt"], root, n, check_files)
    test = read_vtab_list(lists["test.txt"], root, n, check_files)
    return [str(i) for i in range(n)], train, val, test


# --- FGVC (KMnP) -----------------------------------------------------------------------------------------
def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"cannot read {path!r} ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); restore it from the benchmark's distribution") from None


def read_fgvc(root: str, benchmark_split: str = "final", check_files: bool = True):
    raw = {}
    for s in ("train", "val", "test"):
        path = os.path.join(root, f"{s}.json")
        if not os.path.isfile(path):
            raise DataError(f"FGVC folder {root!r} has no {s}.json; KMnP/vpt's split files are train.json, "
                            f"val.json and test.json (docs/benchmarks.md says where to get them)")
        d = _read_json(path)
        if not isinstance(d, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in d.values()):
            raise DataError(f"{path} must map each image path to an integer class id ({{\"path.jpg\": 3, ...}})")
        raw[s] = d
    ids = sorted(set(raw["train"].values()) | set(raw["val"].values()))
    index = {c: i for i, c in enumerate(ids)}
    extra = sorted(set(raw["test"].values()) - set(index))
    if extra:
        raise DataError(f"{root}/test.json has class ids that train.json and val.json lack: {extra[:5]}; "
                        f"use the split files of one release")
    base = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root
    lists: Dict[str, List[Sample]] = {}
    for s, d in raw.items():
        where = os.path.join(root, f"{s}.json")
        items = []
        for rel, cid in d.items():
            p = rel if os.path.isabs(rel) else os.path.join(base, rel)
            if check_files:
                _check_file(p, where)
            items.append((p, index[cid]))
        lists[s] = items
    if benchmark_split == "final":
        train, val = lists["train"] + lists["val"], []
    else:
        train, val = lists["train"], lists["val"]
    _no_duplicates(train + val, f"{root}/train.json + val.json")
    return [str(c) for c in ids], train, val, lists["test"]


# --- CoOp --------------------------------------------------------------------------------------------------
def _coop_split_file(root: str) -> Optional[str]:
    files = sorted(glob.glob(os.path.join(root, "split_zhou_*.json")))
    if len(files) > 1:
        raise DataError(f"{root!r} holds {len(files)} split_zhou_*.json files; keep the one of this dataset")
    return files[0] if files else None


def _coop_image_dir(root: str, split_file: str) -> str:
    for folder, (fname, images) in COOP_DATASETS.items():
        if fname == os.path.basename(split_file):
            return os.path.join(root, images) if images else root
    return os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root


def coop_dataset_name(root: str) -> Optional[str]:
    """Dassl's DATASET.NAME of a CoOp dataset folder, by its split file (``split_zhou_<Name>.json``), FGVCAircraft's
    ``variants.txt`` or ImageNet's ``classnames.txt``; None when ``root`` is not a CoOp folder or names another."""
    if detect_format(root) != "coop":
        return None
    split_file = _coop_split_file(root)
    if split_file is not None:
        name = os.path.basename(split_file)[len("split_zhou_"):-len(".json")]
    elif os.path.isfile(os.path.join(root, "images_variant_train.txt")):
        name = "FGVCAircraft"
    else:
        name = "ImageNet"
    return name if name in COOP_ZEROSHOT_TEMPLATES else None


def _read_zhou(path: str, image_dir: str, check_files: bool):
    d = _read_json(path)
    if not isinstance(d, dict) or not all(s in d for s in ("train", "val", "test")):
        raise DataError(f"{path} must hold {{'train': [...], 'val': [...], 'test': [...]}} lists of "
                        f"[relpath, label, classname] (CoOp's split_zhou_*.json)")
    names: Dict[int, str] = {}
    lists: Dict[str, List[Sample]] = {}
    for s in ("train", "val", "test"):
        items = []
        for n, row in enumerate(d[s]):
            if (not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str)
                    or not isinstance(row[1], int) or not isinstance(row[2], str)):
                raise DataError(f"{path}: {s}[{n}] is {str(row)[:80]}; each item is [relpath, label, classname]")
            rel, y, cname = row
            if names.setdefault(y, cname) != cname:
                raise DataError(f"{path}: label {y} is named both {names[y]!r} and {cname!r}; use one split file")
            p = os.path.join(image_dir, rel)
            if check_files:
                _check_file(p, f"{path} ({s}[{n}])")
            items.append((p, y))
        _no_duplicates(items, f"{path} ({s})")
        lists[s] = items
    return names, lists


def _read_aircraft(root: str, check_files: bool):
    vpath = os.path.join(root, "variants.txt")
    if not os.path.isfile(vpath):
        raise DataError(f"{root!r} has images_variant_*.txt but no variants.txt (FGVCAircraft's class list)")
    with open(vpath, encoding="utf-8") as f:
        classnames = [line.strip() for line in f if line.strip()]
    index = {c: i for i, c in enumerate(classnames)}
    lists: Dict[str, List[Sample]] = {}
    for s in ("train", "val", "test"):
        path = os.path.join(root, f"images_variant_{s}.txt")
        if not os.path.isfile(path):
            raise DataError(f"{root!r} has no images_variant_{s}.txt (FGVCAircraft's {s} list)")
        items = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                parts = line.strip().split(" ")
                if len(parts) < 2:
                    continue
                cname = " ".join(parts[1:])
                if cname not in index:
                    raise DataError(f"{path}:{n}: variant {cname!r} is not in variants.txt"
                                    f"{did_you_mean(cname, classnames)}")
                p = os.path.join(root, "images", parts[0] + ".jpg")
                if check_files:
                    _check_file(p, f"{path}:{n}")
                items.append((p, index[cname]))
        _no_duplicates(items, path)
        lists[s] = items
    return dict(enumerate(classnames)), lists


def _read_imagenet(root: str, check_files: bool):
    from .images import IMAGE_EXTENSIONS, is_image
    names: Dict[str, str] = {}
    with open(os.path.join(root, "classnames.txt"), encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(" ")
            if parts[0]:
                names[parts[0]] = " ".join(parts[1:])
    lists: Dict[str, List[Sample]] = {}
    for s, folder in (("train", "train"), ("test", "val")):
        split_dir = os.path.join(root, "images", folder)
        if not os.path.isdir(split_dir):
            raise DataError(f"ImageNet folder {root!r} has no images/{folder}/ (CoOp's layout: images/train/<wnid>/ "
                            f"and images/val/<wnid>/)")
        folders = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
        items = []
        for y, wnid in enumerate(folders):
            if wnid not in names:
                raise DataError(f"{split_dir}/{wnid} is not in classnames.txt; use CoOp's classnames.txt")
            d = os.path.join(split_dir, wnid)
            items += [(os.path.join(d, f), y) for f in sorted(os.listdir(d))
                      if not f.startswith(".") and is_image(f, IMAGE_EXTENSIONS)]
        lists[s] = items
    folders = sorted(e.name for e in os.scandir(os.path.join(root, "images", "train")) if e.is_dir())
    lists["val"] = list(lists["test"])  # CoOp: ImageNet's val is its test set
    return {y: names[w] for y, w in enumerate(folders)}, lists


def read_coop(root: str, check_files: bool = True):
    """(label -> class name, {train, val, test} item lists in file order) of one CoOp dataset folder."""
    split_file = _coop_split_file(root)
    if split_file is not None:
        return _read_zhou(split_file, _coop_image_dir(root, split_file), check_files)
    if os.path.isfile(os.path.join(root, "images_variant_train.txt")):
        return _read_aircraft(root, check_files)
    if os.path.isfile(os.path.join(root, "classnames.txt")):
        return _read_imagenet(root, check_files)
    raise DataError(f"{root!r} is not a CoOp dataset folder: it needs split_zhou_<Name>.json (from CoOp's DATASETS.md), "
                    f"FGVCAircraft's variants.txt + images_variant_*.txt, or ImageNet's classnames.txt")


def dassl_fewshot(data_sources: Sequence[Sequence[Sample]], num_shots: Sequence[int], seed: int,
                  where: str = "the data", strict: Sequence[bool] = ()) -> List[List[Sample]]:
    """Dassl's ``DatasetBase.generate_fewshot_dataset`` for each source in turn (``repeat=False``), drawing from
    one ``random.Random(seed)`` as Dassl draws from the global ``random`` after ``set_random_seed(seed)``:
    classes in order of first appearance, ``random.sample(items, k)`` per class. Dassl keeps every image of a
    class that has fewer than k (silently, drawing nothing for it); vpt refuses that for a source marked
    ``strict`` (the training set: a k-shot result is k-shot) and keeps Dassl's behaviour for the others (val)."""
    rng = random.Random(seed)
    out = []
    strict = list(strict) + [True] * (len(data_sources) - len(strict))
    for source, k, refuse in zip(data_sources, num_shots, strict):
        tracker: Dict[int, List[Sample]] = {}
        for item in source:
            tracker.setdefault(item[1], []).append(item)
        short = [f"label {y} ({len(v)})" for y, v in tracker.items() if len(v) < k]
        if short and refuse:
            raise DataError(f"{where}: {len(short)} class(es) have fewer than {k} training images to draw {k} shots from: "
                            f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''}. Dassl would keep all of "
                            f"their images (fewer than {k} shots, silently); use --shots {min(len(v) for v in tracker.values())} "
                            f"or less, or add images")
        dataset: List[Sample] = []
        for items in tracker.values():
            dataset.extend(rng.sample(items, k) if len(items) >= k else items)
        out.append(dataset)
    return out


def coop_subsample(lists: Sequence[Sequence[Sample]], labels: Sequence[int], subsample: str):
    """CoOp's ``subsample_classes``: sorted labels, the first ceil(n/2) base, the rest new; relabelled from 0.
    Returns (the kept labels in order, the relabelled lists)."""
    labels = sorted(set(labels))
    m = math.ceil(len(labels) / 2)
    keep = labels if subsample == "all" else labels[:m] if subsample == "base" else labels[m:]
    new = {y: i for i, y in enumerate(keep)}
    return keep, [[(p, new[y]) for p, y in items if y in new] for items in lists]


def load_benchmark(root: str, fmt: str, benchmark_split: str = "final", shots: Optional[int] = None,
                   seed: int = 0, classes: str = "all", check_files: bool = True):
    """(class names, train, val, test, source) of a published-format folder (``fmt``: vtab1k | fgvc | coop)."""
    if benchmark_split not in BENCHMARK_SPLITS:
        raise DataError(f"unknown data.benchmark_split {benchmark_split!r}; use final or tune")
    if fmt == "vtab1k":
        names, train, val, test = read_vtab(root, benchmark_split, check_files)
        src = {"train": "train800val200.txt" if benchmark_split == "final" else "train800.txt",
               "val": "-" if benchmark_split == "final" else "val200.txt", "test": "test.txt"}
    elif fmt == "fgvc":
        names, train, val, test = read_fgvc(root, benchmark_split, check_files)
        src = {"train": "train.json" + (" + val.json" if benchmark_split == "final" else ""),
               "val": "-" if benchmark_split == "final" else "val.json", "test": "test.json"}
    elif fmt == "coop":
        label_names, lists = read_coop(root, check_files)
        train, val, test = lists["train"], lists["val"], lists["test"]
        src = {"train": "coop train", "val": "coop val", "test": "coop test"}
        if shots is not None:
            train, val = dassl_fewshot([train, val], [shots, min(shots, 4)], seed, where=root, strict=[True, False])
            src["train"] += f", {shots}-shot (Dassl, seed {seed})"
            src["val"] += f", {min(shots, 4)}-shot (Dassl, seed {seed})"
        labels = sorted(label_names) if classes == "all" else [y for _, y in train]  # CoOp: the train labels
        keep, (train, val, test) = coop_subsample([train, val, test], labels, classes)
        if benchmark_split == "final":
            val, src["val"] = [], "- (final: the last epoch, as CoOp)"
        names = [label_names[y] for y in keep]
        if classes != "all":
            src = {s: f"{v}, {classes} classes" for s, v in src.items()}
        return names, train, val, test, src
    else:
        raise DataError(f"unknown benchmark format {fmt!r}; use one of {', '.join(FORMATS)}")
    if shots is not None:
        raise DataError(f"--shots applies to CoOp's datasets (Dassl's few-shot draw); {fmt} runs use the published "
                        f"lists as they are: drop --shots")
    if classes != "all":
        raise DataError(f"base-to-novel (data.classes: {classes}) is CoOp's protocol; {fmt} data has no base/novel "
                        f"split: drop --base-to-novel")
    return names, train, val, test, src
