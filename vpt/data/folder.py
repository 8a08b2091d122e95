"""Find labelled images: an image folder (``root/<class>/*``, optionally under ``train/ val/ test/``)
or a CSV of ``path,label`` (optional ``split`` column), and turn them into train / val / test lists."""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .images import IMAGE_EXTENSIONS, is_image
from .splits import CLASS_SUBSETS, Sample, base_novel_classes, class_counts, few_shot, keep_classes, stratified_split

_logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


from ..errors import DataError  # noqa: F401  (re-exported)


@dataclass
class DataSplits:
    class_names: List[str]
    train: List[Sample]
    val: List[Sample]
    test: List[Sample]
    source: Dict[str, str] = field(default_factory=dict)  # split -> 'folder' | 'csv' | 'split of train' ...
    ignored_files: int = 0  # files without an image extension that were not used
    duplicates: int = 0  # files reached twice (links, repeated CSV rows) by real path, dropped

    def summary(self) -> str:
        parts = [f"{s}={len(getattr(self, s))} ({self.source.get(s, '-')})" for s in SPLITS]
        return f"{len(self.class_names)} classes; " + ", ".join(parts)


def _walk_images(top: str, extensions: Sequence[str], seen_dirs: set) -> Tuple[List[str], int]:
    """Image files under ``top``, following links to folders once each by real path (a link loop or a link
    back up the tree is entered once, never endlessly); hidden names skipped. Returns (paths, non-images)."""
    paths, ignored = [], 0
    for dirpath, dirnames, files in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in seen_dirs)
        for f in sorted(files):
            if f.startswith("."):
                continue
            if is_image(f, extensions):
                paths.append(os.path.join(dirpath, f))
            else:
                ignored += 1
    return paths, ignored


def scan_class_folders(root: str, extensions: Sequence[str]) -> Tuple[Dict[str, List[str]], int]:
    """root/<class>/**/<image> -> ({class: [paths]}, files ignored); a class folder without images is an error."""
    tree, ignored, _ = _scan_class_folders(root, extensions)
    return tree, ignored


def _scan_class_folders(root: str, extensions: Sequence[str]) -> Tuple[Dict[str, List[str]], int, int]:
    """scan_class_folders + the number of duplicates dropped. Links are followed once by real path; a file
    reached twice (a link to it, a linked folder) is kept once, under the first class (sorted) reaching it."""
    if not os.path.isdir(root):
        raise DataError(f"data folder not found: {root!r}; pass --data DIR with one sub-folder per class")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise DataError(f"data folder {root!r} has no class sub-folders; expected {root}/<class>/<image> "
                        f"(or {root}/train/<class>/<image>)")
    out: Dict[str, List[str]] = {}
    ignored = duplicates = 0
    seen_files: Dict[str, str] = {}  # real path -> the path it was first found under
    for c in classes:
        found, n = _walk_images(os.path.join(root, c), extensions, seen_dirs=set())
        ignored += n
        paths = []
        for p in found:
            real = os.path.realpath(p)
            if real in seen_files:
                duplicates += 1
                continue
            seen_files[real] = p
            paths.append(p)
        if not paths:
            raise DataError(f"class folder {os.path.join(root, c)!r} has no images ({', '.join(extensions)})"
                            f"{' not already found under another class' if found else ''}; add images or remove "
                            f"the folder")
        out[c] = paths
    if ignored:
        _logger.warning("%s: ignored %d files without an image extension", root, ignored)
    if duplicates:
        _logger.warning("%s: %d files were reached twice (links or linked folders); each is used once", root,
                        duplicates)
    return out, ignored, duplicates


def _label(samples_by_class: Dict[str, List[str]], index: Dict[str, int]) -> List[Sample]:
    return sorted((p, index[c]) for c, ps in samples_by_class.items() for p in ps)


def _inside(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def read_csv(path: str, allow_outside_root: bool = False) -> Dict[str, List[tuple]]:
    """CSV with a header holding ``path`` and ``label`` (and optionally ``split``) -> split -> [(path, label)].

    UTF-8 with or without a byte-order mark (Excel writes one). Paths are relative to the CSV's folder (or
    absolute); a path that leads outside that folder (``..``, an absolute path elsewhere, a link) is refused
    unless ``allow_outside_root`` (``data.allow_outside_root: true``)."""
    if not os.path.isfile(path):
        raise DataError(f"CSV file not found: {path!r}")
    base = os.path.dirname(os.path.abspath(path))
    rows: Dict[str, List[tuple]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in cols or "label" not in cols:
                raise DataError(f"{path}: the header must name the columns 'path' and 'label' (optionally 'split'); "
                                f"found {reader.fieldnames}")
            for n, row in enumerate(reader, start=2):
                row = {k.strip().lower(): (v if isinstance(v, str) else "").strip() for k, v in row.items()
                       if isinstance(k, str)}
                if not row.get("path") or not row.get("label"):
                    raise DataError(f"{path}:{n}: empty path or label")
                split = _SPLIT_ALIASES.get(row.get("split", "train").lower() or "train")
                if split is None:
                    raise DataError(f"{path}:{n}: unknown split {row.get('split')!r}; use train, val or test")
                p = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
                if "\x00" in p:
                    raise DataError(f"{path}:{n}: the path holds a NUL character")
                if not allow_outside_root and not _inside(p, base):
                    raise DataError(f"{path}:{n}: {row['path']!r} is outside the CSV's folder {base!r}; move the "
                                    f"images under it, or allow it with data.allow_outside_root: true "
                                    f"(--set data.allow_outside_root=true)")
                rows.setdefault(split, []).append((p, row["label"]))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save the CSV as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a readable CSV ({e}); write 'path,label[,split]' rows") from None
    except OSError as e:
        raise DataError(f"cannot read {path!r} ({e.strerror or e})") from None
    if not rows.get("train"):
        raise DataError(f"{path} lists no training rows (rows without a split column count as train)")
    return rows


def _dedupe(lists: Dict[str, List[Sample]], root: str) -> int:
    """Drop repeated files (same real path) within each split; refuse a file that is in two splits."""
    dropped = 0
    owner: Dict[str, str] = {}
    for s in SPLITS:
        kept, seen = [], set()
        for p, y in lists[s]:
            real = os.path.realpath(p)
            if real in seen:
                dropped += 1
                continue
            seen.add(real)
            if real in owner:
                leaks = [q for q, _ in lists[s] if os.path.realpath(q) in owner]
                raise DataError(f"{root}: {len(leaks)} {s} image(s) are also in {owner[real]} (same file by real "
                                f"path, e.g. {p!r}); a {s} image the model trained on would inflate the score. "
                                f"Remove them from one split")
            kept.append((p, y))
        for real in seen:
            owner[real] = s
        lists[s] = kept
    return dropped


def _first_readable(paths: Sequence[str]) -> Optional[str]:
    from .dataset import BAD_IMAGE_ERRORS, load_image
    for p in paths:
        try:
            load_image(p)
            return p
        except BAD_IMAGE_ERRORS:
            continue
    return None


def _check_usable(train: List[Sample], names: List[str], root: str, missing_ok: bool = False) -> None:
    """Every class must keep at least one readable training image (decoded until one is found); with
    ``missing_ok`` (published lists, e.g. VTAB-1k's 800 images of 397 classes) a class without any is allowed."""
    by_class: Dict[int, List[str]] = {}
    for p, y in train:
        by_class.setdefault(y, []).append(p)
    for i, name in enumerate(names):
        paths = by_class.get(i, [])
        if missing_ok and not paths:
            continue
        if _first_readable(paths) is None:
            raise DataError(f"class {name!r} in {root!r} has no usable training image ({len(paths)} file(s), "
                            f"none readable as an image); replace the broken files or remove the class")


def _check_classes(class_names: List[str], where: str) -> None:
    if len(class_names) < 2:
        raise DataError(f"{where} has only {len(class_names)} class ({', '.join(class_names)}); "
                        f"classification needs at least two classes")


def load_splits(root: str, val_fraction: float = 0.1, test_fraction: float = 0.0, split_seed: int = 0,
                shots: Optional[int] = None, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                class_names: Optional[List[str]] = None, classes: str = "all", allow_outside_root: bool = False,
                check_readable: bool = True, format: str = "auto", benchmark_split: str = "final") -> DataSplits:
    """Find the images under ``root`` (folder or CSV) and return the train / val / test lists.

    Missing splits are carved out of train, stratified with ``split_seed``: first test, then val. The
    few-shot subset (``shots`` per class) is drawn from what remains for training. ``classes``: all, or
    CoOp's base / novel half of the sorted class names (selected last, so the images of a class are the
    same in every subset), relabelled from 0.
    Files are identified by real path: repeats are dropped (``duplicates``), a file in two splits is an
    error, and (``check_readable``) so is a class whose training files are all unreadable.
    ``format``: auto (detected from the folder) | folder | csv | vtab1k | fgvc | coop; the published benchmark
    formats (``vpt.data.benchmarks``) keep their own splits (``benchmark_split``: final | tune), so the
    fractions do not apply to them, and their few-shot draw and base/novel classes follow Dassl / CoOp.
    """
    from .benchmarks import FORMATS, detect_format, load_benchmark
    if format not in FORMATS:
        raise DataError(f"unknown data.format {format!r}; use one of {', '.join(FORMATS)}")
    fmt = detect_format(root) if (format == "auto" and root is not None) else format
    if fmt in ("vtab1k", "fgvc", "coop"):
        if root is None or not os.path.isdir(root):
            raise DataError(f"data.format {fmt}: {root!r} is not a folder; pass the benchmark's task folder")
        names, train, val, test, source = load_benchmark(root, fmt, benchmark_split, shots, split_seed, classes)
        if check_readable:
            _check_usable(train, names, root, missing_ok=True)
        return DataSplits(names, train, val, test, source)
    if classes not in CLASS_SUBSETS:
        raise DataError(f"unknown class subset {classes!r}; available: {', '.join(CLASS_SUBSETS)}")
    if root is None:
        raise DataError("no data given; pass --data DIR (an image folder) or --data FILE.csv")
    extensions = [e.lower() if e.startswith(".") else "." + e.lower() for e in extensions]
    source: Dict[str, str] = {}
    duplicates = 0
    if os.path.isfile(root) and root.lower().endswith(".csv"):
        rows = read_csv(root, allow_outside_root=allow_outside_root)
        found = {s: rows.get(s, []) for s in SPLITS}
        for s in SPLITS:
            source[s] = "csv" if found[s] else "-"
        train_names = sorted({lab for _, lab in found["train"]})
        names = train_names
        index = {c: i for i, c in enumerate(names)}
        for s in ("val", "test"):
            extra = sorted({lab for _, lab in found[s]} - set(index))
            if extra:
                raise DataError(f"{root}: {s} rows have labels that train lacks: {extra[:5]}")
        lists = {s: sorted((p, index[lab]) for p, lab in found[s]) for s in SPLITS}
        ignored = 0
    else:
        has_splits = os.path.isdir(os.path.join(root, "train"))
        if not has_splits and any(os.path.isdir(os.path.join(root, s)) for s in ("val", "test")):
            raise DataError(f"{root!r} has val/ or test/ but no train/; add {root}/train/<class>/ images")
        tree, ignored, duplicates = _scan_class_folders(os.path.join(root, "train") if has_splits else root,
                                                        extensions)
        names = sorted(tree)
        index = {c: i for i, c in enumerate(names)}
        lists = {"train": _label(tree, index), "val": [], "test": []}
        source["train"] = "folder"
        for s in ("val", "test"):
            d = os.path.join(root, s)
            if has_splits and os.path.isdir(d):
                sub, n, dup = _scan_class_folders(d, extensions)
                ignored += n
                duplicates += dup
                extra = sorted(set(sub) - set(index))
                if extra:
                    raise DataError(f"{d} has classes that {root}/train lacks: {extra[:5]}; "
                                    f"the class folders of every split must come from train")
                lists[s] = _label(sub, index)
                source[s] = "folder"
    if classes != "all" and len(names) < 2:
        raise DataError(f"base-to-novel splits the classes into a base and a novel half, so it needs at least 2 "
                        f"classes; {root!r} has {len(names)} ({', '.join(names)}): add class folders")
    duplicates += _dedupe(lists, root)
    if duplicates:
        _logger.warning("%s: %d repeated files (same real path) dropped", root, duplicates)
    _check_classes(names, root)
    if class_names is not None and list(class_names) != names:
        raise DataError(class_mismatch_message(list(class_names), names, root))
    train = lists["train"]
    if not lists["test"] and test_fraction > 0:
        train, lists["test"] = stratified_split(train, test_fraction, split_seed + 7919)
        source["test"] = f"{test_fraction:g} of train (seed {split_seed})"
    if not lists["val"] and val_fraction > 0:
        train, lists["val"] = stratified_split(train, val_fraction, split_seed)
        source["val"] = f"{val_fraction:g} of train (seed {split_seed})"
    if shots is not None:
        counts = class_counts(train, len(names))
        short = [f"{names[i]} ({n})" for i, n in enumerate(counts) if n < shots]
        if short:
            raise DataError(f"--shots {shots} is larger than what {len(short)} class(es) of {root!r} have for training "
                            f"(after the val/test split): {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}; "
                            f"use --shots {min(counts)} or less, or add images")
        train = few_shot(train, shots, split_seed)
        source["train"] += f", {shots}-shot (seed {split_seed})"
    val, test = lists["val"], lists["test"]
    if classes != "all":
        try:
            base, novel = base_novel_classes(names)
        except ValueError as e:
            raise DataError(f"{root}: {e}") from None
        keep = base if classes == "base" else novel
        train, val, test = (keep_classes(x, names, keep) for x in (train, val, test))
        source = {s: f"{v}, {classes} classes" for s, v in source.items()}
        names = keep
    if check_readable:
        _check_usable(train, names, root)
    return DataSplits(names, train, val, test, source, ignored, duplicates)


def class_mismatch_message(expected: List[str], found: List[str], root: str) -> str:
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    detail = []
    if missing:
        detail.append(f"missing {missing[:5]}")
    if extra:
        detail.append(f"extra {extra[:5]}")
    if not detail:
        detail.append("same names in another order")
    return (f"the classes in {root!r} differ from the model's ({'; '.join(detail)}); the model was trained on "
            f"{expected[:8]}{' ...' if len(expected) > 8 else ''}. Evaluate on data with the same class folders")
