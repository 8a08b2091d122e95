"""COCO mAP comes from faster-coco-eval / pycocotools; these check the wiring around it (category ids,
label offsets, per-class AP), with detections whose correct AP is known."""
import numpy as np
import pytest
import torch

from vpt.detection.coco_eval import coco_map, outputs_to_coco, records_to_coco
from vpt.detection.data import DetRecord

pytest.importorskip("faster_coco_eval", reason="pip install 'vpt[detection]'")


def _records():
    return [DetRecord(0, "a.png", 100, 80, np.array([[10, 10, 40, 40], [50, 20, 90, 70]], np.float32), np.array([0, 1])),
            DetRecord(1, "b.png", 100, 80, np.array([[5, 5, 30, 50]], np.float32), np.array([1]))]


def _output(boxes, labels, offset=0, scores=None):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    scores = torch.linspace(0.9, 0.5, len(boxes)) if scores is None else torch.tensor(scores)
    return {"boxes": boxes, "labels": torch.tensor(labels) + offset, "scores": scores}


@pytest.mark.parametrize("offset", [0, 1])
def test_perfect_detections_score_one(offset):
    recs = _records()
    gt = records_to_coco(recs, ["cat", "dog"])
    assert [c["id"] for c in gt["categories"]] == [1, 2] and gt["annotations"][1]["bbox"] == [50, 20, 40, 50]
    dets = outputs_to_coco(0, _output(recs[0].boxes, [0, 1], offset), offset)
    dets += outputs_to_coco(1, _output(recs[1].boxes, [1], offset), offset)
    m = coco_map(gt, dets)
    assert m["mAP"] == pytest.approx(1.0) and m["mAP50"] == pytest.approx(1.0)
    assert m["per_class_AP"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    if offset:  # Faster R-CNN's background label 0 never becomes a class
        assert outputs_to_coco(0, _output([[1, 1, 5, 5]], [0], 0), 1) == []


def test_wrong_class_and_shifted_boxes_lower_the_right_numbers():
    recs = _records()
    gt = records_to_coco(recs, ["cat", "dog"])
    dets = outputs_to_coco(0, _output(recs[0].boxes, [1, 1], scores=[0.2, 0.8]), 0)  # the cat called a dog (last)
    dets += outputs_to_coco(1, _output(recs[1].boxes, [1]), 0)
    m = coco_map(gt, dets)
    assert m["per_class_AP"]["cat"] == pytest.approx(0.0)
    assert m["per_class_AP"]["dog"] == pytest.approx(1.0, abs=1e-6)
    assert m["mAP"] == pytest.approx(0.5, abs=1e-6)
    # a box shifted to IoU ~0.6 counts at 0.5 but not at 0.75
    shifted = outputs_to_coco(1, _output([[5, 13, 30, 58]], [1]), 0)
    m2 = coco_map(records_to_coco(recs[1:], ["cat", "dog"]), shifted)
    assert m2["mAP50"] == pytest.approx(1.0) and m2["mAP75"] == pytest.approx(0.0) and 0 < m2["mAP"] < 0.6


def test_no_detections_scores_zero():
    m = coco_map(records_to_coco(_records(), ["cat", "dog"]), [])
    assert m["mAP"] == 0.0 and m["num_detections"] == 0 and m["num_gt_boxes"] == 3
