"""Typed configs of the detector and its data; the run config (with the engine's sections) is
``vpt.tasks.detection.DetectionRunConfig``. YAML is read only by the CLI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..backbones.base import BackboneConfig
from ..config import PROMPT_SECTION, Checked, FieldError, one_of, option
from ..registry import did_you_mean


@dataclass
class PyramidConfig(Checked):
    """ViTDet simple feature pyramid (Li et al. 2022) over the frozen ViT's patch grid."""
    out_channels: int = option(256, "channels of every pyramid level (the torchvision head's in_channels)",
                               range=(1, 8192))
    scales: List[float] = option(help="map scale vs the patch grid, one per level", range=(1 / 64, 64),
                                 default_factory=lambda: [4.0, 2.0, 1.0, 0.5])
    blocks: Optional[List[int]] = option(None, "ViT block per scale (negatives count back); null: the last block "
                                               "for all", range=(-4096, 4096))
    norm: bool = option(False, "apply the ViT's final norm to the block outputs first (ViTDet: no)")
    strides: Optional[List[int]] = option(None, "input pixels per cell of each pyramid map, finest first. CNN "
                                                "backbones: the feature strides the FPN takes (null: 8, 16, 32); "
                                                "ViTs: if set, must equal patch size / scale", range=(1, 4096))


@dataclass
class DetectorConfig(Checked):
    """Which torchvision detector sits on the pyramid, and its resize / anchor settings."""
    kind: str = option("fcos", "a registered detector kind: fcos | retinanet | faster_rcnn (torchvision)")
    pyramid: PyramidConfig = option(default_factory=PyramidConfig, help="the simple feature pyramid")
    min_size: int = option(512, "torchvision transform: shorter image side after resizing", range=(1, 8192))
    max_size: int = option(683, "torchvision transform: longer side never exceeds this", range=(1, 8192))
    fixed_size: Optional[List[int]] = option(None, "[H, W]: resize every image to exactly this (torchvision's "
                                                   "fixed_size) instead of min_size / max_size; pixel prompts "
                                                   "need it", range=(1, 8192))
    anchor_scale: Optional[float] = option(None, "anchor size / level stride (null: per-detector default 1, 4, 8)",
                                           range=(1e-3, 1e3))
    head_convs: int = option(4, "conv layers in the FCOS head tower (torchvision default 4)", range=(0, 64))
    box_head_dim: int = option(1024, "Faster R-CNN TwoMLPHead width (torchvision default 1024)", range=(1, 65536))
    score_thresh: float = option(0.05, "keep detections above this score", range=(0.0, 1.0))
    nms_thresh: float = option(0.5, "NMS IoU threshold per class", range=(0.0, 1.0))
    detections_per_img: int = option(100, "maximum detections per image", range=(1, 100_000))

    def check(self) -> None:
        if self.fixed_size is not None and len(self.fixed_size) != 2:
            raise FieldError("fixed_size", f" must be two numbers [H, W], got {list(self.fixed_size)}")
        from .detectors import DETECTORS  # the registry of detector kinds (its builders import torchvision lazily)
        if self.kind not in DETECTORS:
            names = DETECTORS.names()
            raise FieldError("kind", f": unknown detector kind {self.kind!r}; available: {', '.join(names)}"
                                     f"{did_you_mean(self.kind, names)}")


@dataclass
class DetDataConfig(Checked):
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
    hflip: float = option(0.5, "probability of a horizontal flip", range=(0.0, 1.0))
    vflip: float = option(0.0, "probability of a vertical flip (0.5 suits microscopy, not street scenes)",
                          range=(0.0, 1.0))
    affine: float = option(0.5, "probability of a random scale (0.75-1.25) + shift (10%); boxes clipped or dropped",
                           range=(0.0, 1.0))
    color: float = option(0.5, "probability of brightness / contrast jitter", range=(0.0, 1.0))
    min_visibility: float = option(0.3, "after augmentation, drop a box keeping less than this share of its area",
                                   range=(0.0, 1.0))
    max_images: Optional[int] = option(None, "use only the first N images of each split (smoke runs)",
                                       range=(1, None))


@dataclass
class DetModelSection:
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(name="timm:vit_base_patch16_224"))  # frozen ViT
    prompt: Optional[Any] = one_of(PROMPT_SECTION, help="image prompt, e.g. {kind: vpt_deep, num_tokens: 10}; null: "
                                                        "the unprompted frozen ViT")
    train_backbone: bool = option(False, "unfreeze the backbone (full fine-tuning baseline; a CNN's BatchNorm "
                                         "statistics stay frozen)")
