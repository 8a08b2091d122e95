"""Detection annotations: Pascal VOC XML folders and COCO JSON files -> checked records.

Every box is validated on load: degenerate boxes (xmax <= xmin or ymax <= ymin) and boxes wholly
outside the image are dropped, boxes crossing the border are clipped; each kind is counted and logged.
Class indices are 0-based in label order (``classes``); the detector's own label offset (background
handling) is applied later, in ``vpt.detection.model``.
"""
from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AnnotationError, ConfigError, DataError
from ..registry import did_you_mean

_logger = logging.getLogger(__name__)

@dataclass
class DetRecord:
    """One image and its boxes (absolute pixels, x1 y1 x2 y2) with 0-based class indices."""
    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32 xyxy
    labels: np.ndarray  # (n,) int64 indices into the class list


@dataclass
class BoxStats:
    """What validation did to the boxes of one split; logged once per split."""
    kept: int = 0
    degenerate: int = 0  # xmax <= xmin or ymax <= ymin: dropped
    outside: int = 0  # no overlap with the image: dropped
    clipped: int = 0  # crossed the border: clipped to it
    crowd: int = 0  # COCO iscrowd=1: not trained on
    details: List[str] = field(default_factory=list)  # first few dropped boxes, for the log

    def log(self, where: str) -> None:
        if self.degenerate or self.outside:
            _logger.warning("%s: dropped %d degenerate and %d out-of-image boxes (kept %d, clipped %d)%s", where,
                            self.degenerate, self.outside, self.kept, self.clipped,
                            ": " + "; ".join(self.details[:5]) if self.details else "")
        else:
            _logger.info("%s: %d boxes (clipped %d to the image)", where, self.kept, self.clipped)
        if self.crowd:
            _logger.info("%s: skipped %d crowd annotations (iscrowd=1)", where, self.crowd)


def check_boxes(boxes: np.ndarray, width: int, height: int, stats: BoxStats, where: str) -> np.ndarray:
    """Boolean mask of boxes to keep; clips kept boxes in place."""
    keep = np.ones(len(boxes), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not (x2 > x1 and y2 > y1):
            keep[i] = False
            stats.degenerate += 1
            stats.details.append(f"{where} degenerate box {[float(v) for v in (x1, y1, x2, y2)]}")
        elif x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            keep[i] = False
            stats.outside += 1
            stats.details.append(f"{where} box {[float(v) for v in (x1, y1, x2, y2)]} outside {width}x{height}")
        elif x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            boxes[i] = [max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)]
            stats.clipped += 1
    stats.kept += int(keep.sum())
    return keep


def _image_size(path: str) -> Tuple[int, int]:
    from PIL import Image
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)  # EXIF orientation: 5-8 are stored rotated by 90 degrees
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # the size as loaded (upright), like load_rgb


# --- Pascal VOC ---------------------------------------------------------------------------------
def _voc_ids(root: str, split: str) -> List[str]:
    lst = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(lst):
        have = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.dirname(lst))) \
            if os.path.isdir(os.path.dirname(lst)) else []
        raise AnnotationError(f"VOC split list {lst} not found; splits here: {', '.join(have) or 'none'}"
                              f"{did_you_mean(split, have)} (set data.train_split / val_split / test_split)")
    with open(lst, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise AnnotationError(f"VOC split list {lst} is empty; list one image id per line")
    return ids


def _voc_float(obj: ET.Element, key: str, where: str) -> float:
    text = obj.findtext(f"bndbox/{key}")
    if text is None:
        raise AnnotationError(f"{where}: <bndbox> lacks <{key}>; VOC boxes need xmin, ymin, xmax, ymax in pixels")
    try:
        return float(text)
    except ValueError:
        raise AnnotationError(f"{where}: <{key}> is {text!r}, not a number; VOC boxes are pixel "
                              f"coordinates xmin, ymin, xmax, ymax") from None


def _parse_voc_xml(path: str) -> ET.Element:
    if not os.path.isfile(path):
        raise AnnotationError(f"annotation file {path} is missing; every id in the split list needs "
                              f"Annotations/<id>.xml (remove the id from the list or add the file)")
    if os.path.getsize(path) == 0:
        raise AnnotationError(f"annotation file {path} is empty; write the VOC XML for it or remove its id "
                              f"from the split list")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"annotation file {path} is not valid XML ({e}); fix or regenerate it") from None


def read_voc(root: str, split: str, classes: Optional[Sequence[str]] = None,
             max_images: Optional[int] = None) -> Tuple[List[DetRecord], List[str], BoxStats]:
    """Read ``root/ImageSets/Main/<split>.txt``; ``classes`` None = the sorted names found in this split."""
    ids = _voc_ids(root, split)[:max_images]
    parsed = []
    for image_id, stem in enumerate(ids):
        xml = os.path.join(root, "Annotations", f"{stem}.xml")
        node = _parse_voc_xml(xml)
        fname = node.findtext("filename") or f"{stem}.jpg"
        img = os.path.join(root, "JPEGImages", os.path.basename(fname))
        if not os.path.isfile(img):
            img2 = os.path.join(root, "JPEGImages", f"{stem}.jpg")
            if not os.path.isfile(img2):
                raise AnnotationError(f"image {img} listed in {split}.txt (via {xml}) is missing; add the image "
                                      f"or remove id {stem!r} from ImageSets/Main/{split}.txt")
            img = img2
        try:
            w, h = int(float(node.findtext("size/width"))), int(float(node.findtext("size/height")))
        except (TypeError, ValueError):
            w, h = 0, 0
        if w <= 0 or h <= 0:
            w, h = _image_size(img)
        objs = []
        for j, obj in enumerate(node.iter("object")):
            where = f"{xml} object {j}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise AnnotationError(f"{where} has no <name>; every object needs its class name")
            if obj.find("bndbox") is None:
                raise AnnotationError(f"{where} ({name}) has no <bndbox>; VOC boxes are "
                                      f"<bndbox><xmin/><ymin/><xmax/><ymax/></bndbox> in pixels")
            box = [_voc_float(obj, k, where) for k in ("xmin", "ymin", "xmax", "ymax")]
            objs.append((name, box, where))
        parsed.append((image_id, img, w, h, objs))
    if classes is None:
        classes = sorted({name for *_, objs in parsed for name, _, _ in objs})
        if not classes:
            raise AnnotationError(f"split {split!r} of {root} has no objects; cannot find the class list "
                                  f"(set data.classes)")
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    stats, records = BoxStats(), []
    for image_id, img, w, h, objs in parsed:
        for name, _, where in objs:
            if name not in index:
                raise AnnotationError(f"{where}: unknown class {name!r}; known classes: {', '.join(classes)}"
                                      f"{did_you_mean(name, classes)}. Fix the name or add it to data.classes")
        boxes = np.array([b for _, b, _ in objs], dtype=np.float32).reshape(-1, 4)
        labels = np.array([index[n] for n, _, _ in objs], dtype=np.int64)
        keep = check_boxes(boxes, w, h, stats, os.path.basename(img))
        records.append(DetRecord(image_id, img, w, h, boxes[keep], labels[keep]))
    stats.log(f"VOC {split} ({len(records)} images)")
    return records, classes, stats


# --- COCO JSON ----------------------------------------------------------------------------------
def _load_coco_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise AnnotationError(f"COCO annotation file {path} not found; set data.coco_annotations "
                              f"(default annotations/instances_{{split}}.json under the data folder)")
    if os.path.getsize(path) == 0:
        raise AnnotationError(f"COCO annotation file {path} is empty; it needs images, annotations, categories")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"COCO annotation file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        have = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise AnnotationError(f"COCO annotation file {path} needs the keys images, annotations, categories; "
                              f"it has {have}")
    return data


def read_coco(ann_path: str, image_dir: str, classes: Optional[Sequence[str]] = None,
              max_images: Optional[int] = None) -> Tuple[List[DetRecord], List[str], BoxStats]:
    """Read a COCO ``instances`` JSON; ``classes`` None = the categories' names in id order."""
    data = _load_coco_json(ann_path)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_name = {c["id"]: str(c["name"]) for c in cats}
    if classes is None:
        classes = [cat_name[c["id"]] for c in cats]
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    for cid, name in cat_name.items():
        if name not in index:
            raise AnnotationError(f"{ann_path}: category {cid} {name!r} is not a known class; known: "
                                  f"{', '.join(classes)}{did_you_mean(name, classes)}. Add it to data.classes")
    images = data["images"][:max_images] if max_images else data["images"]
    by_image: Dict[Any, list] = {im["id"]: [] for im in images}
    for j, ann in enumerate(data["annotations"]):
        if ann.get("image_id") in by_image:
            by_image[ann["image_id"]].append((j, ann))
    stats, records = BoxStats(), []
    for im in images:
        img = os.path.join(image_dir, im["file_name"])
        if not os.path.isfile(img):
            raise AnnotationError(f"image {img} (id {im['id']} in {ann_path}) is missing; add it or remove its "
                                  f"entry (check data.coco_images)")
        w, h = int(im.get("width") or 0), int(im.get("height") or 0)
        if w <= 0 or h <= 0:
            w, h = _image_size(img)
        boxes, labels = [], []
        for j, ann in by_image[im["id"]]:
            where = f"{ann_path} annotation {j} (id {ann.get('id')})"
            if ann.get("category_id") not in cat_name:
                raise AnnotationError(f"{where}: category_id {ann.get('category_id')!r} is not in categories "
                                      f"{sorted(cat_name)}; fix the id or add the category")
            bbox = ann.get("bbox")
            if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                raise AnnotationError(f"{where}: bbox {bbox!r} is not 4 numbers; COCO boxes are "
                                      f"[x, y, width, height] in pixels")
            if ann.get("iscrowd"):
                stats.crowd += 1
                continue
            x, y, bw, bh = (float(v) for v in bbox)
            boxes.append([x, y, x + bw, y + bh])  # xywh -> xyxy
            labels.append(index[cat_name[ann["category_id"]]])
        boxes_a = np.array(boxes, dtype=np.float32).reshape(-1, 4)
        labels_a = np.array(labels, dtype=np.int64)
        keep = check_boxes(boxes_a, w, h, stats, os.path.basename(img))
        records.append(DetRecord(len(records), img, w, h, boxes_a[keep], labels_a[keep]))
    if not records:
        raise AnnotationError(f"{ann_path} lists no images")
    stats.log(f"COCO {os.path.basename(ann_path)} ({len(records)} images)")
    return records, classes, stats


# --- either ---------------------------------------------------------------------------------------
def detect_format(root: str, fmt: str = "auto") -> str:
    if not root or not os.path.isdir(root):
        raise DataError(f"data folder {root!r} not found; pass --data DIR (a VOC folder with Annotations/, "
                        f"or a COCO folder with annotations/*.json)")
    if fmt in ("voc", "coco"):
        return fmt
    if fmt != "auto":
        raise ConfigError(f"unknown data.format {fmt!r}; available: auto, coco, voc{did_you_mean(fmt, ['voc', 'coco'])}")
    if os.path.isdir(os.path.join(root, "Annotations")):
        return "voc"
    if os.path.isdir(os.path.join(root, "annotations")):
        return "coco"
    raise DataError(f"{root} is neither a VOC folder (Annotations/, JPEGImages/, ImageSets/Main/) nor a COCO "
                    f"folder (annotations/instances_<split>.json); set data.format")


def read_split(cfg, split: str, classes: Optional[Sequence[str]] = None
               ) -> Tuple[List[DetRecord], List[str], BoxStats]:
    """Records of one split for a :class:`~vpt.detection.config.DetDataConfig`."""
    fmt = detect_format(cfg.root, cfg.format)
    if fmt == "voc":
        return read_voc(cfg.root, split, classes, cfg.max_images)
    ann = os.path.join(cfg.root, cfg.coco_annotations.format(split=split))
    return read_coco(ann, os.path.join(cfg.root, cfg.coco_images.format(split=split)), classes, cfg.max_images)
