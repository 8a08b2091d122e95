"""Box-aware augmentation (albumentations) and the torch Dataset that feeds torchvision detectors.

Resizing and normalisation are left to the detector's own ``GeneralizedRCNNTransform`` (min_size /
max_size, the backbone's mean / std), which also maps predictions back to the original image size, so
evaluation compares boxes in the annotation's own pixels.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from .data import DetRecord


def build_transforms(cfg, train: bool, seed: int = 0):
    """albumentations pipeline for a DetDataConfig; None when there is nothing to do (eval).

    albumentations keeps its own random generator (not torch's / numpy's global one): ``seed`` seeds it,
    and the trainer re-seeds it every epoch (``set_random_seed``) so runs and resumed runs repeat exactly."""
    if not (train and cfg.augment):
        return None
    import albumentations as A
    ops = []
    if cfg.hflip > 0:
        ops.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.vflip > 0:
        ops.append(A.VerticalFlip(p=cfg.vflip))
    if cfg.affine > 0:
        ops.append(A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), p=cfg.affine))
    if cfg.color > 0:
        ops.append(A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=cfg.color))
    if not ops:
        return None
    return A.Compose(ops, bbox_params=bbox_params(cfg), seed=seed)


def bbox_params(cfg):
    """Boxes ride along with labels; a box leaving the image is clipped to it, and dropped (with its
    label) when less than ``min_visibility`` of its area or under 1 px remains."""
    import albumentations as A
    return A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, filter_invalid_bboxes=True,
                        min_visibility=cfg.min_visibility, min_width=1.0, min_height=1.0)


def apply_transforms(tf, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run an albumentations pipeline; boxes and labels stay in step (a dropped box drops its label)."""
    if tf is None:
        return image, boxes, labels
    out = tf(image=image, bboxes=boxes.reshape(-1, 4), labels=labels)
    b = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    lab = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
    return out["image"], b, lab


def load_rgb(path: str) -> np.ndarray:
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        return np.array(ImageOps.exif_transpose(im).convert("RGB"))  # (H, W, 3) uint8, writable, upright (EXIF)


class DetectionDataset(torch.utils.data.Dataset):
    """Records -> (image (3, H, W) float in [0, 1], target {boxes xyxy, labels + label_offset, image_id})."""

    def __init__(self, records: Sequence[DetRecord], transforms=None, label_offset: int = 0):
        self.records = list(records)
        self.transforms = transforms
        self.label_offset = int(label_offset)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        image = load_rgb(r.path)
        if image.shape[:2] != (r.height, r.width):
            from .data import AnnotationError
            raise AnnotationError(f"{r.path} is {image.shape[1]}x{image.shape[0]} but its annotation says "
                                  f"{r.width}x{r.height}; fix the size in the annotation")
        image, boxes, labels = apply_transforms(self.transforms, image, r.boxes.copy(), r.labels.copy())
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)  # (3, H, W)
        target = {"boxes": torch.from_numpy(boxes).float().reshape(-1, 4),
                  "labels": torch.from_numpy(labels).long() + self.label_offset,
                  "image_id": torch.tensor(r.image_id)}
        return x, target


def collate(batch: List[Tuple[torch.Tensor, Dict[str, Any]]]):
    """torchvision detectors take lists of differently sized images."""
    images, targets = zip(*batch)
    return list(images), list(targets)
