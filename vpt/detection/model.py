"""PromptedDetector: frozen prompted ViT -> simple feature pyramid -> a torchvision detector.

Trainable: the prompts, the pyramid and the detector's heads; the ViT stays frozen (and in eval mode). A
CNN backbone (no token sequence: pixel prompts only) feeds an FPN instead (``cnn_pyramid``);
``train_backbone`` unfreezes either (full fine-tuning). Saved as a vpt artifact with ``model_type:
detection``, its class list and label mapping.
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
from ..prompts import prompt_to_dict, resolve_prompt_config
from ..registry import MODEL_TYPES
from .config import DetectorConfig
from .cnn_pyramid import CNNFeaturePyramid
from .detectors import DETECTORS
from .pyramid import ViTFeaturePyramid


@dataclass
class DetectionSections:
    """What a detection artifact holds besides backbone, image prompt and classes (``vpt.schema``)."""
    detector: DetectorConfig = option(default_factory=DetectorConfig, help="pyramid + torchvision detector")
    label_offset: int = option(0, "dataset class i is detector label i + label_offset (1: background at 0)",
                               range=(0, 1))
    label_map: Optional[Dict[str, int]] = option(None, "the dataset's label -> class index, as trained")
    preprocessing: DataConfig = option(default_factory=DataConfig, help="the input the backbone expects")
    train_backbone: bool = option(False, "the backbone was fine-tuned (its tensors are in the artifact)")


def detection_backbone_config(cfg: Union[str, BackboneConfig, Dict[str, Any]]) -> BackboneConfig:
    """timm ViTs get ``dynamic_img_size=True`` so position embeddings are resampled to every input size."""
    if isinstance(cfg, str):
        cfg = BackboneConfig(name=cfg)
    cfg = from_dict(BackboneConfig, cfg, where="backbone")
    if cfg.name.startswith(("timm:", "vpt:")) and "dynamic_img_size" not in cfg.model_kwargs and _timm_vit(cfg.name):
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "dynamic_img_size": True})
    return cfg


# timm modules whose models take ``dynamic_img_size`` (CNNs such as EfficientNet take any size as they are)
_DYNAMIC_SIZE_MODULES = ("vision_transformer", "deit", "eva", "vision_transformer_hybrid")


def _timm_vit(name: str) -> bool:
    if not name.startswith("timm:"):
        return True  # vpt: shipped models are ViTs
    arch = name[len("timm:"):].split("/")[0].split(".")[0]
    import timm
    try:
        module = timm.models.model_entrypoint(arch).__module__
    except (KeyError, RuntimeError):  # unknown architecture: create_backbone names it with its own message
        return False
    return module.rsplit(".", 1)[-1] in _DYNAMIC_SIZE_MODULES


def check_strides(pyramid: ViTFeaturePyramid, strides: Optional[List[int]], backbone: BackboneAdapter) -> None:
    """A ViT pyramid's strides are patch size / scale; a config that states others is refused."""
    if strides is None:
        return
    have = pyramid.strides[:len(pyramid.stages)]
    if [float(s) for s in strides] != have:
        scales = [pyramid.patch_size[0] / s for s in strides]
        given = [pyramid.patch_size[0] / h for h in have]
        raise ConfigError(f"detector.pyramid.strides {list(strides)} do not match backbone '{backbone.config.name}': "
                          f"its patch size {pyramid.patch_size[0]} with scales {given} "
                          f"gives strides {[int(h) if h == int(h) else h for h in have]}; set detector.pyramid.scales "
                          f"to {scales} for those strides, or drop detector.pyramid.strides")


def pixel_prompt_at_fixed_size(prompt: Any, cfg: DetectorConfig) -> Any:
    """A pixel prompt runs inside the backbone, on the image the detector's transform has normalised, resized and
    padded into the batch. Without ``fixed_size`` that transform keeps each image's aspect ratio and pads the batch,
    so a border or patch would sit at a different place on each image (or on the padding): refused. With it, the
    prompt is built at exactly that size (its ``image_size``, which must agree)."""
    if prompt is None or getattr(prompt, "needs", None) != "pixels":
        return prompt
    if cfg.fixed_size is None:
        raise ConfigError(f"pixel prompt '{prompt.kind}' on a detector: torchvision's transform resizes each image by "
                          f"its own aspect ratio (min_size {cfg.min_size}, max_size {cfg.max_size}) and pads the "
                          f"batch after the prompt's size is fixed, so the prompt would not sit where the transform "
                          f"puts the image; set detector.fixed_size: [H, W] (multiples of the pyramid's coarsest "
                          f"stride, e.g. [192, 256] for 4:3 images) so every image reaches the prompt normalised at "
                          f"one size")
    size = [int(v) for v in cfg.fixed_size]
    if prompt.image_size is None:
        return dataclasses.replace(prompt, image_size=size)
    if [int(v) for v in prompt.image_size] != size:
        raise ConfigError(f"prompt.image_size {list(prompt.image_size)} differs from detector.fixed_size {size}: the "
                          f"transform would resize the image after the prompt was sized for another input; set "
                          f"prompt.image_size to {size} or null")
    return prompt


class PromptedDetector(AdapterMixin, nn.Module):
    """Build with :func:`create_detector`; call like the torchvision detector it wraps."""

    model_type = "detection"  # = the module name, so vpt.engine.build.ensure_model_type can import it
    task = "detection"  # the vpt task that evaluates / predicts its artifacts (vpt.Artifact.task)
    config_sections = DetectionSections  # the artifact sections this model type adds (vpt.schema)

    def __init__(self, backbone: BackboneAdapter, class_names: Sequence[str], prompt: Any = None,
                 detector: Union[None, Dict[str, Any], DetectorConfig] = None, train_backbone: bool = False):
        super().__init__()
        backbone.require("any_input_size", who="a detector")  # torchvision resizes images freely
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
        prompt = pixel_prompt_at_fixed_size(resolve_prompt_config(prompt), cfg)
        prompted = PromptedModel(backbone, prompt=prompt, num_classes=0, train_backbone=train_backbone)
        self.train_backbone = bool(train_backbone)
        self.prompt_config = prompted.prompt_config
        self.data_config = prompted.data_config
        p = cfg.pyramid
        if backbone.supports_tokens:
            pyramid = ViTFeaturePyramid(prompted, p.out_channels, p.scales, p.blocks, p.norm, kind.extra)
            check_strides(pyramid, p.strides, backbone)
        else:
            if p.blocks is not None or p.norm:
                raise ConfigError(f"detector.pyramid.blocks / norm pick ViT blocks; backbone '{backbone.config.name}' "
                                  f"is a CNN whose stages are chosen by detector.pyramid.strides; drop blocks / norm")
            pyramid = CNNFeaturePyramid(prompted, p.out_channels, p.strides, kind.extra)
        if cfg.fixed_size is not None and any(v % pyramid.size_divisible for v in cfg.fixed_size):
            fix = [-(-v // pyramid.size_divisible) * pyramid.size_divisible for v in cfg.fixed_size]
            raise ConfigError(f"detector.fixed_size {list(cfg.fixed_size)} is not a multiple of "
                              f"{pyramid.size_divisible} (the pyramid's coarsest stride), so the transform would pad "
                              f"the batch after resizing; use e.g. {fix}")
        tkw = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(self.data_config.mean),
                   image_std=list(self.data_config.std), size_divisible=pyramid.size_divisible)
        if cfg.fixed_size is not None:
            tkw["fixed_size"] = (int(cfg.fixed_size[1]), int(cfg.fixed_size[0]))  # torchvision's order: (W, H)
        scale = kind.anchor_scale if cfg.anchor_scale is None else cfg.anchor_scale
        self.detector = kind.build(pyramid, len(self.class_names), cfg, scale, tkw)
        self.train(False)

    @property
    def pyramid(self) -> Union[ViTFeaturePyramid, CNNFeaturePyramid]:
        return self.detector.backbone

    @property
    def vit(self) -> PromptedModel:
        """The prompted backbone (a ViT, or a CNN with a pixel prompt or none)."""
        return self.detector.backbone.prompted

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
            "train_backbone": self.train_backbone,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any], backbone: BackboneAdapter) -> "PromptedDetector":
        model = cls(backbone, class_names=config.get("class_names") or [], prompt=config.get("prompt"),
                    detector=config.get("detector"), train_backbone=bool(config.get("train_backbone", False)))
        saved = config.get("label_offset")
        if saved is not None and int(saved) != model.label_offset:
            raise ConfigError(f"artifact label_offset {saved} differs from {model.detector_config.kind}'s "
                              f"{model.label_offset}; the artifact was made by an incompatible vpt version")
        return model


MODEL_TYPES.register("detection")(PromptedDetector)


def create_detector(backbone: Union[str, BackboneConfig, Dict[str, Any], BackboneAdapter], class_names: Sequence[str],
                    prompt: Any = None, detector: Union[None, str, Dict[str, Any], DetectorConfig] = None,
                    train_backbone: bool = False, **backbone_kwargs: Any) -> PromptedDetector:
    """Build a prompted detector.

    Args:
        backbone: as :func:`vpt.create_model`; timm ViTs get ``dynamic_img_size=True`` unless told otherwise.
        class_names: classes in label order (saved with the artifact).
        prompt: a prompt kind or config (``'vpt_deep'``); None = the unprompted frozen ViT.
        detector: ``'fcos'`` / ``'retinanet'`` / ``'faster_rcnn'`` or a DetectorConfig (dict).
        train_backbone: unfreeze the backbone (the full fine-tuning baseline).
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
    return PromptedDetector(backbone, class_names, prompt=prompt, detector=detector, train_backbone=train_backbone)
