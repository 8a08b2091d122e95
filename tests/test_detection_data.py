"""Detection data: VOC / COCO readers, box validation with counts, clear errors, box-aware augmentation."""
import json
import logging
import os

import numpy as np
import pytest
import torch

from helpers import make_coco, make_voc, voc_xml
from vpt.detection.config import DetDataConfig
from vpt.detection.data import AnnotationError, read_coco, read_split, read_voc
from vpt.detection.transforms import DetectionDataset, apply_transforms, bbox_params, build_transforms

# --- VOC --------------------------------------------------------------------------------------------
def test_voc_reads_boxes_classes_and_splits(tmp_path):
    root, truth = make_voc(tmp_path / "voc")
    records, classes, stats = read_voc(root, "train")
    assert classes == ["blue", "red"]  # sorted names found in the split
    assert len(records) == 4 and stats.kept == 8 and stats.degenerate == stats.outside == 0
    r = records[1]
    expect = {n: b for n, b in truth["img001"]}
    got = {classes[int(lab)]: box.tolist() for lab, box in zip(r.labels, r.boxes)}
    assert got == {n: [float(v) for v in b] for n, b in expect.items()}
    assert (r.width, r.height) == (64, 64) and r.path.endswith("img001.png")
    val, _, _ = read_voc(root, "val", classes)
    assert [os.path.basename(v.path) for v in val] == ["img004.png", "img005.png"]


def test_voc_drops_degenerate_and_outside_boxes_with_logged_counts(tmp_path, caplog):
    root, _ = make_voc(tmp_path / "voc")
    objs = [("red", (5, 5, 20, 20)), ("red", (30, 5, 30, 20)), ("blue", (10, 40, 25, 40)),
            ("blue", (70, 70, 90, 90)), ("red", (50, 50, 80, 70))]
    with open(os.path.join(root, "Annotations", "img000.xml"), "w") as f:
        f.write(voc_xml("img000.png", 64, 64, objs))
    with caplog.at_level(logging.WARNING, logger="vpt.detection.data"):
        records, classes, stats = read_voc(root, "train", classes=["blue", "red"])
    assert (stats.degenerate, stats.outside, stats.clipped) == (2, 1, 1)
    assert records[0].boxes.tolist() == [[5, 5, 20, 20], [50, 50, 64, 64]]  # the last one clipped
    assert records[0].labels.tolist() == [1, 1]
    assert "dropped 2 degenerate and 1 out-of-image boxes" in caplog.text


def test_voc_unknown_class_names_the_file_and_the_fix(tmp_path):
    root, _ = make_voc(tmp_path / "voc")
    with open(os.path.join(root, "Annotations", "img002.xml"), "w") as f:
        f.write(voc_xml("img002.png", 64, 64, [("rde", (1, 1, 9, 9))]))
    with pytest.raises(AnnotationError, match=r"img002.xml object 0: unknown class 'rde'.*did you mean 'red'"):
        read_voc(root, "train", classes=["blue", "red"])


def test_voc_missing_image_is_an_error(tmp_path):
    root, _ = make_voc(tmp_path / "voc")
    os.unlink(os.path.join(root, "JPEGImages", "img003.png"))
    with pytest.raises(AnnotationError, match=r"img003.png listed in train.txt .* is missing"):
        read_voc(root, "train")


def test_voc_empty_annotation_file_is_an_error(tmp_path):
    root, _ = make_voc(tmp_path / "voc")
    open(os.path.join(root, "Annotations", "img001.xml"), "w").close()
    with pytest.raises(AnnotationError, match=r"img001.xml is empty"):
        read_voc(root, "train")


def test_voc_box_in_the_wrong_format_is_an_error(tmp_path):
    root, _ = make_voc(tmp_path / "voc")
    with open(os.path.join(root, "Annotations", "img001.xml"), "w") as f:
        f.write(voc_xml("img001.png", 64, 64, [("red", ("ten", 1, 9, 9))]))
    with pytest.raises(AnnotationError, match=r"<xmin> is 'ten', not a number"):
        read_voc(root, "train")
    with open(os.path.join(root, "Annotations", "img001.xml"), "w") as f:
        f.write('<annotation><filename>img001.png</filename><object><name>red</name><x>1</x></object></annotation>')
    with pytest.raises(AnnotationError, match=r"has no <bndbox>"):
        read_voc(root, "train")


def test_missing_split_lists_the_available_ones(tmp_path):
    root, _ = make_voc(tmp_path / "voc")
    with pytest.raises(AnnotationError, match=r"splits here: test, train, val; did you mean 'train'"):
        read_voc(root, "trian")


# --- COCO -------------------------------------------------------------------------------------------
def test_coco_reads_xywh_as_xyxy_with_category_order(tmp_path):
    root = make_coco(tmp_path / "coco")
    ann = os.path.join(root, "annotations", "instances_train.json")
    data = json.load(open(ann))
    data["annotations"].append({"id": 999, "image_id": 100, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1})
    json.dump(data, open(ann, "w"))
    records, classes, stats = read_coco(ann, os.path.join(root, "train"))
    assert classes == ["red", "blue"]  # categories in id order (3, 7)
    assert stats.crowd == 1 and stats.kept == 12
    a = next(x for x in data["annotations"] if x["image_id"] == 100 and x["category_id"] == 7)
    x, y, w, h = a["bbox"]
    r = records[0]
    assert [x, y, x + w, y + h] in r.boxes.tolist()
    assert r.labels[r.boxes.tolist().index([x, y, x + w, y + h])] == 1  # 'blue' is class 1


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"bbox \[1, 2, 3\] is not 4 numbers; COCO boxes are \[x, y, width, height\]"),
    (lambda d: d["annotations"][0].update(category_id=42), r"category_id 42 is not in categories \[3, 7\]"),
    (lambda d: d["images"][0].update(file_name="nope.png"), r"nope.png .* is missing"),
    (lambda d: d.pop("categories"), r"needs the keys images, annotations, categories"),
])
def test_coco_bad_input_errors(tmp_path, edit, match):
    root = make_coco(tmp_path / "coco", splits=("train",))
    ann = os.path.join(root, "annotations", "instances_train.json")
    data = json.load(open(ann))
    edit(data)
    json.dump(data, open(ann, "w"))
    with pytest.raises(AnnotationError, match=match):
        read_coco(ann, os.path.join(root, "train"))


def test_coco_empty_file_and_auto_format(tmp_path):
    root = make_coco(tmp_path / "coco", splits=("train",))
    recs, classes, _ = read_split(DetDataConfig(root=root), "train")  # auto -> coco
    assert len(recs) == 6 and classes == ["red", "blue"]
    open(os.path.join(root, "annotations", "instances_train.json"), "w").close()
    with pytest.raises(AnnotationError, match="is empty"):
        read_split(DetDataConfig(root=root), "train")


# --- augmentation -----------------------------------------------------------------------------------
def test_flip_moves_boxes_and_keeps_labels_in_step():
    cfg = DetDataConfig(hflip=1.0, vflip=0.0, affine=0.0, color=0.0)
    img = np.zeros((40, 64, 3), np.uint8)
    boxes = np.array([[2, 3, 12, 13], [30, 5, 60, 25]], np.float32)
    out_img, b, lab = apply_transforms(build_transforms(cfg, train=True), img, boxes, np.array([1, 0]))
    assert b.tolist() == [[52, 3, 62, 13], [4, 5, 34, 25]]  # x -> 64 - x
    assert lab.tolist() == [1, 0]
    assert build_transforms(cfg, train=False) is None  # evaluation sees the original pixels


def test_augmentation_is_seeded():
    cfg = DetDataConfig(hflip=0.5, vflip=0.5, affine=1.0, color=0.5)
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    boxes, labels = np.array([[10, 10, 30, 30], [35, 5, 60, 40]], np.float32), np.array([0, 1])

    def run(seed):
        tf = build_transforms(cfg, train=True, seed=seed)
        return [apply_transforms(tf, img, boxes, labels) for _ in range(3)]
    a, b, c = run(3), run(3), run(4)
    for (ia, ba, la), (ib, bb, lb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(ba, bb) and np.array_equal(la, lb)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_boxes_leaving_the_image_are_clipped_or_dropped_with_their_labels():
    import albumentations as A
    tf = A.Compose([A.Affine(translate_px={"x": 40, "y": 0}, p=1.0)], bbox_params=bbox_params(DetDataConfig()))
    img = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[2, 2, 12, 12], [30, 5, 50, 25], [10, 30, 30, 50], [20, 40, 34, 60]], np.float32)
    _, b, lab = apply_transforms(tf, img, boxes, np.array([0, 1, 2, 3]))
    # inside: moved; wholly outside: dropped; 14/20 visible: clipped; 4/14 visible (< 0.3): dropped
    assert lab.tolist() == [0, 2]
    np.testing.assert_allclose(b, [[42, 2, 52, 12], [50, 30, 64, 50]], atol=1e-4)


def test_dataset_applies_the_detector_label_offset(tmp_path):
    root, _ = make_voc(tmp_path / "voc")
    records, _, _ = read_voc(root, "train")
    x, t = DetectionDataset(records, None, label_offset=1)[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert t["labels"].tolist() == (records[0].labels + 1).tolist()
    assert torch.equal(t["boxes"], torch.from_numpy(records[0].boxes))
