"""COCO box mAP through an established library (faster-coco-eval, else pycocotools); never hand-written.

Ground truth is the validated annotation (original pixels, COCO category id = class index + 1);
detections are the detector's outputs mapped back through its label offset.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Dict, List, Sequence


from .data import DetRecord

_logger = logging.getLogger(__name__)


def _backend():
    try:
        from faster_coco_eval import COCO, COCOeval_faster
        return "faster_coco_eval", COCO, COCOeval_faster
    except ImportError:
        pass
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return "pycocotools", COCO, COCOeval
    except ImportError:
        raise ImportError("COCO mAP needs faster-coco-eval or pycocotools: pip install 'vpt[detection]' "
                          "(or pip install faster-coco-eval)") from None


def records_to_coco(records: Sequence[DetRecord], classes: Sequence[str]) -> Dict[str, Any]:
    """Validated records -> a COCO ground-truth dict (boxes xywh, category ids 1..K)."""
    images, anns = [], []
    for r in records:
        images.append({"id": int(r.image_id), "width": int(r.width), "height": int(r.height), "file_name": r.path})
        for box, lab in zip(r.boxes, r.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": int(r.image_id), "category_id": int(lab) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": i + 1, "name": str(c)} for i, c in enumerate(classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def outputs_to_coco(image_id: int, output: Dict[str, Any], label_offset: int) -> List[Dict[str, Any]]:
    """One torchvision detector output -> COCO result entries."""
    boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    scores = output["scores"].detach().float().cpu().numpy().reshape(-1)
    labels = output["labels"].detach().cpu().numpy().reshape(-1) - label_offset
    return [{"image_id": int(image_id), "category_id": int(lab) + 1,
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
            for b, s, lab in zip(boxes, scores, labels) if lab >= 0]


def coco_map(gt: Dict[str, Any], detections: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Run COCOeval (bbox) and return mAP (0.5:0.95), mAP@0.5, mAP@0.75 and AP per class (0.5:0.95).

    Per-class AP is read from the library's accumulated precision array, as detectron2 does."""
    name, COCO, COCOeval = _backend()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        quiet = {"print_function": _logger.debug} if name == "faster_coco_eval" else {}
        coco_gt = COCO(gt, **quiet) if name == "faster_coco_eval" else _pycoco_from_dict(COCO, gt)
        coco_dt = coco_gt.loadRes(detections) if detections else _empty_results(coco_gt, name)
        E = COCOeval(coco_gt, coco_dt, iouType="bbox", **quiet)
        E.evaluate()
        E.accumulate()
        E.summarize()
    _logger.debug("COCO summary (%s):\n%s", name, out.getvalue())
    precision = E.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    per_class = {}
    for k, cid in enumerate(E.params.catIds):
        p = precision[:, :, k, 0, -1]
        cname = next(c["name"] for c in gt["categories"] if c["id"] == cid)
        per_class[cname] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    stats = [float(s) for s in E.stats]
    return {"mAP": stats[0], "mAP50": stats[1], "mAP75": stats[2], "per_class_AP": per_class,
            "coco_stats": stats, "num_images": len(gt["images"]), "num_gt_boxes": len(gt["annotations"]),
            "num_detections": len(detections), "evaluator": name}


def _pycoco_from_dict(COCO, gt):
    c = COCO()
    c.dataset = gt
    c.createIndex()
    return c


def _empty_results(coco_gt, name):
    if name == "faster_coco_eval":
        return coco_gt.loadRes([])
    c = type(coco_gt)()
    c.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []}
    c.createIndex()
    return c


def mean_ap_dict(metrics: Dict[str, Any]) -> str:
    """One log line: mAP, mAP@0.5 and the per-class APs."""
    pcs = ", ".join(f"{k} {v:.3f}" for k, v in metrics["per_class_AP"].items())
    return f"mAP {metrics['mAP']:.4f}  mAP@0.5 {metrics['mAP50']:.4f}  per class: {pcs}"


__all__ = ["coco_map", "mean_ap_dict", "outputs_to_coco", "records_to_coco"]
