"""PromptedDetector: frozen prompted ViT -> simple feature pyramid -> a torchvision detector.

Trainable: the prompts, the pyramid and the detector's heads; the ViT stays frozen (and in eval mode).
Saved as a vpt artifact with ``model_type: detection``, its class list and label mapping.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..backbones import BackboneAdapter, BackboneConfig, create_backbone
from ..backbones.base import DataConfig
from ..config import ConfigError, from_dict, option, to_dict
from ..model import AdapterMixin, PromptedModel
from ..prompts import prompt_to_dict
from ..registry import MODEL_TYPES
from .config import DetectorConfig
from .detectors import DETECTORS
from .pyramid import ViTFeaturePyramid


@dataclass
class DetectionSections:
    """What a detection artifact holds besides backbone, image prompt and classes (``vpt.schema``)."""
    detector: DetectorConfig = option(default_factory=DetectorConfig, help="pyramid + torchvision detector")
    label_offset: int = option(0, "dataset class i is detector label i + label_offset (1: background at 0)",
                               range=(0, 1))
    label_map: Optional[Dict[str, int]] = option(None, "the dataset's label -> class index, as trained")
    preprocessing: DataConfig = option(default_factory=DataConfig, help="the input the ViT expects")


def detection_backbone_config(cfg: Union[str, BackboneConfig, Dict[str, Any]]) -> BackboneConfig:
    """timm ViTs get ``dynamic_img_size=True`` so position embeddings are resampled to every input size."""
    if isinstance(cfg, str):
        cfg = BackboneConfig(name=cfg)
    cfg = from_dict(BackboneConfig, cfg, where="backbone")
    if cfg.name.startswith(("timm:", "vpt:")) and "dynamic_img_size" not in cfg.model_kwargs:
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "dynamic_img_size": True})
    return cfg


class PromptedDetector(AdapterMixin, nn.Module):
    """Build with :func:`create_detector`; call like the torchvision detector it wraps."""

    model_type = "detection"  # = the module name, so vpt.engine.build.ensure_model_type can import it
    task = "detection"  # the vpt task that evaluates / predicts its artifacts (vpt.Artifact.task)
    config_sections = DetectionSections  # the artifact sections this model type adds (vpt.schema)

    def __init__(self, backbone: BackboneAdapter, class_names: Sequence[str], prompt: Any = None,
                 detector: Union[None, Dict[str, Any], DetectorConfig] = None):
        super().__init__()
        backbone.require("tokens", "any_input_size", who="a detector")  # torchvision resizes images freely
        self.detector_config = from_dict(DetectorConfig, detector or {}, where="detector")
        cfg = self.detector_config
        try:
            kind = DETECTORS.get(cfg.kind).factory
        except KeyError as e:
            raise ConfigError(f"detector.kind: {e.args[0]}") from None
        if not class_names:
            raise ConfigError("a detector needs at least one class name")
        self.class_names = [str(c) for c in class_names]
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"class names repeat: {self.class_names}")
        self.label_offset = kind.label_offset
        vit = PromptedModel(backbone, prompt=prompt, num_classes=0)
        self.prompt_config = vit.prompt_config
        self.data_config = vit.data_config
        p = cfg.pyramid
        pyramid = ViTFeaturePyramid(vit, p.out_channels, p.scales, p.blocks, p.norm, kind.extra)
        tkw = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(self.data_config.mean),
                   image_std=list(self.data_config.std), size_divisible=pyramid.size_divisible)
        scale = kind.anchor_scale if cfg.anchor_scale is None else cfg.anchor_scale
        self.detector = kind.build(pyramid, len(self.class_names), cfg, scale, tkw)
        self.train(False)

    @property
    def pyramid(self) -> ViTFeaturePyramid:
        return self.detector.backbone

    @property
    def vit(self) -> PromptedModel:
        return self.detector.backbone.vit

    @property
    def label_map(self) -> Dict[str, int]:
        """Class name -> the label id the detector uses (after its background offset)."""
        return {c: i + self.label_offset for i, c in enumerate(self.class_names)}

    def label_name(self, label: int) -> str:
        i = int(label) - self.label_offset
        return self.class_names[i] if 0 <= i < len(self.class_names) else f"label{int(label)}"

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        """Training (with targets): dict of losses. Eval: list of {boxes, labels, scores} per image,
        boxes in each input image's own pixels."""
        return self.detector(images, targets)

    def role_modules(self) -> Dict[str, List[nn.Module]]:
        """Prompts, the frozen ViT, and the head: the pyramid and the torchvision detector's heads."""
        return {"prompt": super().role_modules()["prompt"], "backbone": [self.vit.backbone], "head": [self.detector]}

    # --- artifacts ----------------------------------------------------------------------------------
    def to_config(self) -> Dict[str, Any]:
        return {
            "model_type": self.model_type,
            "backbone": self.vit.backbone.identity(),
            "prompt": prompt_to_dict(self.prompt_config) if self.prompt_config is not None else None,
            "detector": to_dict(self.detector_config),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "label_offset": self.label_offset,
            "label_map": self.label_map,
            "preprocessing": to_dict(self.data_config),
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any], backbone: BackboneAdapter) -> "PromptedDetector":
        model = cls(backbone, class_names=config.get("class_names") or [], prompt=config.get("prompt"),
                    detector=config.get("detector"))
        saved = config.get("label_offset")
        if saved is not None and int(saved) != model.label_offset:
            raise ConfigError(f"artifact label_offset {saved} differs from {model.detector_config.kind}'s "
                              f"{model.label_offset}; the artifact was made by an incompatible vpt version")
        return model


MODEL_TYPES.register("detection")(PromptedDetector)


def create_detector(backbone: Union[str, BackboneConfig, Dict[str, Any], BackboneAdapter], class_names: Sequence[str],
                    prompt: Any = None, detector: Union[None, str, Dict[str, Any], DetectorConfig] = None,
                    **backbone_kwargs: Any) -> PromptedDetector:
    """Build a prompted detector.

    Args:
        backbone: as :func:`vpt.create_model`; timm ViTs get ``dynamic_img_size=True`` unless told otherwise.
        class_names: classes in label order (saved with the artifact).
        prompt: a prompt kind or config (``'vpt_deep'``); None = the unprompted frozen ViT.
        detector: ``'fcos'`` / ``'retinanet'`` / ``'faster_rcnn'`` or a DetectorConfig (dict).
        **backbone_kwargs: ``pretrained=False``, ``init_seed``, ``weights=PATH``, ``model_kwargs={...}``.
    """
    if isinstance(detector, str):
        detector = {"kind": detector}
    if not isinstance(backbone, BackboneAdapter):
        cfg = backbone if not isinstance(backbone, str) else BackboneConfig(name=backbone)
        cfg = from_dict(BackboneConfig, cfg, where="backbone")
        cfg = dataclasses.replace(cfg, **backbone_kwargs) if backbone_kwargs else cfg
        backbone = create_backbone(detection_backbone_config(cfg))
    elif backbone_kwargs:
        raise TypeError(f"backbone options {sorted(backbone_kwargs)} given with an already built backbone")
    return PromptedDetector(backbone, class_names, prompt=prompt, detector=detector)
