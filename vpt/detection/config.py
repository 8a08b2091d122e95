"""Typed configs of the detector and its data; the run config (with the engine's sections) is
``vpt.tasks.detection.DetectionRunConfig``. YAML is read only by the CLI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..backbones import BackboneConfig


@dataclass
class PyramidConfig:
    """ViTDet simple feature pyramid (Li et al. 2022) over the frozen ViT's patch grid."""
    out_channels: int = 256  # channels of every pyramid level (the torchvision head's in_channels)
    scales: List[float] = field(default_factory=lambda: [4.0, 2.0, 1.0, 0.5])  # map scale vs the patch grid
    blocks: Optional[List[int]] = None  # ViT block per scale (negatives count back); None = last block for all
    norm: bool = False  # apply the ViT's final norm to the block outputs first (ViTDet: no)


@dataclass
class DetectorConfig:
    """Which torchvision detector sits on the pyramid, and its resize / anchor settings."""
    kind: str = "fcos"  # fcos | retinanet | faster_rcnn (torchvision.models.detection)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    min_size: int = 512  # torchvision transform: shorter image side after resizing
    max_size: int = 683  # torchvision transform: longer side never exceeds this
    anchor_scale: Optional[float] = None  # anchor size / level stride; None = per-detector default (1, 4, 8)
    head_convs: int = 4  # conv layers in the FCOS head tower (torchvision default 4)
    box_head_dim: int = 1024  # Faster R-CNN TwoMLPHead width (torchvision default 1024)
    score_thresh: float = 0.05  # keep detections above this score
    nms_thresh: float = 0.5  # NMS IoU threshold per class
    detections_per_img: int = 100  # maximum detections per image


@dataclass
class DetDataConfig:
    """Where the boxes are: a Pascal VOC folder or COCO JSON files."""
    root: Optional[str] = None  # dataset folder (the --data flag)
    format: str = "auto"  # voc | coco | auto (VOC if root/Annotations exists, else COCO)
    classes: Optional[List[str]] = None  # class names in label order; None = found in the train split
    train_split: str = "train"  # VOC: ImageSets/Main/<split>.txt; COCO: annotation file for the split
    val_split: str = "val"  # evaluated every epoch, picks the best artifact
    test_split: str = "test"  # `vpt eval` default
    coco_annotations: str = "annotations/instances_{split}.json"  # COCO: JSON path under root
    coco_images: str = "{split}"  # COCO: image folder under root
    augment: bool = True  # albumentations box-aware augmentation on the train split (below)
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip (0.5 suits microscopy, not street scenes)
    affine: float = 0.5  # probability of a random scale (0.75-1.25) + shift (10%); boxes clipped or dropped
    color: float = 0.5  # probability of brightness / contrast jitter
    min_visibility: float = 0.3  # after augmentation, drop a box keeping less than this share of its area
    max_images: Optional[int] = None  # use only the first N images of each split (smoke runs)


@dataclass
class DetModelSection:
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(name="timm:vit_base_patch16_224"))  # frozen ViT
    prompt: Optional[Dict[str, Any]] = None  # e.g. {kind: vpt_deep, num_tokens: 10}; None = unprompted frozen ViT
