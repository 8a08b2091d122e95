"""Run a detector on image files: PNGs with the boxes drawn, and one JSON of all detections."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..io import atomic_write_json
from .model import PromptedDetector
from .transforms import load_rgb

_logger = logging.getLogger(__name__)
_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
            "#fabed4", "#469990", "#dcbeff", "#9a6324"]


def draw_detections(image: np.ndarray, dets: List[Dict[str, Any]], class_names: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8 -> the same with boxes and 'class score' captions (torchvision's drawing)."""
    from torchvision.utils import draw_bounding_boxes
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
    if not dets:
        return image
    boxes = torch.tensor([d["box_xyxy"] for d in dets], dtype=torch.float32)
    colors = [_PALETTE[class_names.index(d["class_name"]) % len(_PALETTE)] if d["class_name"] in class_names
              else "#ffffff" for d in dets]
    out = draw_bounding_boxes(x, boxes, labels=[f"{d['class_name']} {d['score']:.2f}" for d in dets],
                              colors=colors, width=2)
    return out.permute(1, 2, 0).numpy()  # (H, W, 3)


def readable_images(paths: Sequence[str]) -> Tuple[List[str], List[Dict[str, str]]]:
    """(paths that open as images, [{"file", "error"}] for the others): a file that is not an image is
    reported, never a traceback."""
    from PIL import Image

    from ..data.dataset import BAD_IMAGE_ERRORS
    readable: List[str] = []
    errors: List[Dict[str, str]] = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
            readable.append(p)
        except BAD_IMAGE_ERRORS as e:
            errors.append({"file": p, "error": f"not a readable image ({type(e).__name__}: {str(e)[:200]})"})
    return readable, errors


@torch.no_grad()
def predict_images(model: PromptedDetector, paths: Sequence[str], out_dir: str, device: torch.device,
                   score_thresh: float = 0.3, batch_size: int = 4) -> Dict[str, Any]:
    """Detect on ``paths``; write ``out_dir/<stem>.png`` per image and ``out_dir/detections.json`` (with the
    unreadable files under "errors"). When no file is readable nothing is written (``images`` is empty)."""
    from PIL import Image
    model.eval()
    images: List[Dict[str, Any]] = []
    used = set()
    paths, errors = readable_images(paths)
    result = {"artifact": getattr(model, "name_or_path", None), "revision": getattr(model, "revision", None),
              "class_names": model.class_names, "label_map": model.label_map, "score_thresh": score_thresh,
              "box_format": "xyxy pixels of the input image", "images": images, "errors": errors}
    if not paths:
        return result
    os.makedirs(out_dir, exist_ok=True)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        arrays = [load_rgb(p) for p in chunk]
        xs = [torch.from_numpy(a).permute(2, 0, 1).float().div(255).to(device) for a in arrays]  # (3, H, W)
        for path, arr, out in zip(chunk, arrays, model(xs)):
            dets = [{"class_name": model.label_name(lab), "label": int(lab), "score": float(s),
                     "box_xyxy": [round(float(v), 2) for v in b]}
                    for b, s, lab in zip(out["boxes"].cpu(), out["scores"].cpu(), out["labels"].cpu())
                    if float(s) >= score_thresh]
            stem = os.path.splitext(os.path.basename(path))[0]
            name, k = f"{stem}.png", 1
            while name in used:  # same stem in two folders
                name, k = f"{stem}_{k}.png", k + 1
            used.add(name)
            Image.fromarray(draw_detections(arr, dets, model.class_names)).save(os.path.join(out_dir, name))
            images.append({"file": path, "output": name, "width": arr.shape[1], "height": arr.shape[0],
                           "detections": dets})
    atomic_write_json(os.path.join(out_dir, "detections.json"), result)
    _logger.info("wrote %d images with boxes and detections.json to %s", len(images), out_dir)
    return result
