"""torchvision's FCOS, RetinaNet and Faster R-CNN on the ViT feature pyramid; builders, not rewrites.

Background handling differs per detector and is explicit: FCOS and RetinaNet score every class with a
sigmoid, so class ``i`` is label ``i`` (``label_offset`` 0); Faster R-CNN's softmax reserves label 0 for
background, so class ``i`` is label ``i + 1`` (``label_offset`` 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List

from torch import nn

from ..config import ConfigError
from ..registry import Registry
from .pyramid import ViTFeaturePyramid


@dataclass(frozen=True)
class DetectorKind:
    extra: str  # extra pyramid levels: p6p7 | pool | none
    label_offset: int  # dataset class i -> detector label i + label_offset
    anchor_scale: float  # default anchor size / level stride
    build: Callable[..., nn.Module]  # (backbone, num_classes, cfg, anchor_sizes, transform_kwargs) -> model


DETECTORS: Registry[DetectorKind] = Registry("detector kind")


def anchor_generator(sizes: List[tuple], aspect_ratios: tuple):
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    return AnchorGenerator(sizes=tuple(sizes), aspect_ratios=(aspect_ratios,) * len(sizes))


def _fcos(backbone: ViTFeaturePyramid, num_classes: int, cfg, scale: float, tkw: Dict[str, Any]) -> nn.Module:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.fcos import FCOSHead
    if backbone.out_channels % 32:
        raise ConfigError(f"detector.pyramid.out_channels is {backbone.out_channels}; FCOS's head uses "
                          f"GroupNorm(32, C), so use a multiple of 32 (e.g. 32, 64, 256)")
    sizes = [(s * scale,) for s in backbone.strides]  # one point per cell (FCOS: size = stride)
    return FCOS(backbone, num_classes, anchor_generator=anchor_generator(sizes, (1.0,)),
                head=FCOSHead(backbone.out_channels, 1, num_classes, num_convs=cfg.head_convs),
                score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                detections_per_img=cfg.detections_per_img, **tkw)


def _retinanet(backbone: ViTFeaturePyramid, num_classes: int, cfg, scale: float, tkw: Dict[str, Any]) -> nn.Module:
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.retinanet import RetinaNetHead
    sizes = [tuple(s * scale * 2 ** (i / 3) for i in range(3)) for s in backbone.strides]  # 3 octave scales
    gen = anchor_generator(sizes, (0.5, 1.0, 2.0))
    head = RetinaNetHead(backbone.out_channels, gen.num_anchors_per_location()[0], num_classes)
    return RetinaNet(backbone, num_classes, anchor_generator=gen, head=head, score_thresh=cfg.score_thresh,
                     nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img, **tkw)


def _faster_rcnn(backbone: ViTFeaturePyramid, num_classes: int, cfg, scale: float, tkw: Dict[str, Any]) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign
    sizes = [(s * scale,) for s in backbone.strides]
    maps = [n for n in backbone.level_names if n != "pool"]  # RoIAlign on the pyramid, not the RPN-only level
    res = 7
    return FasterRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchor_generator(sizes, (0.5, 1.0, 2.0)),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=maps, output_size=res, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * res * res, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes + 1),  # + background
        box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.nms_thresh,
        box_detections_per_img=cfg.detections_per_img, **tkw)


DETECTORS.register("fcos", help="FCOS, anchor-free (torchvision)")(DetectorKind("p6p7", 0, 1.0, _fcos))
DETECTORS.register("retinanet", help="RetinaNet, focal loss (torchvision)")(DetectorKind("p6p7", 0, 4.0, _retinanet))
DETECTORS.register("faster_rcnn", help="Faster R-CNN, two-stage (torchvision)")(
    DetectorKind("pool", 1, 8.0, _faster_rcnn))
