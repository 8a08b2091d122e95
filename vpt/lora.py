"""LoRA baseline (``model.type: lora``): the frozen backbone with peft's LoRA on chosen linear layers and the
usual head, trained and saved through the same engine and artifact format as prompts.

peft is an optional dependency (``pip install "vpt[bench]"`` or ``pip install peft``). LoRA adapters are
injected into the library model with ``peft.inject_adapter_in_model``; vpt's block loop then runs the
library's own (now LoRA-wrapped) layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .backbones import BackboneConfig, create_backbone
from .config import ConfigError, from_dict, to_dict
from .model import PromptedModel
from .registry import MODEL_TYPES


@dataclass
class LoraConfig:
    r: int = 8  # rank
    alpha: float = 8.0  # scaling numerator (peft lora_alpha): updates are scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA branch input
    target_modules: List[str] = field(default_factory=lambda: ["qkv"])  # timm ViT: qkv (and/or proj, fc1, fc2)


class LoraClassifier(PromptedModel):
    """Frozen backbone + LoRA (peft) + head. ``vpt.create_model``'s arguments plus ``lora``."""

    model_type = "lora"

    def __init__(self, backbone, lora: Optional[Dict[str, Any]] = None, num_classes: int = 0, head=None,
                 class_names: Optional[Sequence[str]] = None):
        try:
            import peft
        except ImportError:
            raise ImportError("model.type 'lora' needs peft: pip install peft") from None
        super().__init__(backbone, prompt=None, num_classes=num_classes, head=head,
                         class_names=list(class_names) if class_names is not None else None)
        self.lora_config = from_dict(LoraConfig, dict(lora or {}), where="model.lora")
        c = self.lora_config
        if c.r < 1:
            raise ConfigError(f"model.lora.r must be >= 1, got {c.r}")
        names = {n.rsplit(".", 1)[-1] for n, _ in backbone.model.named_modules()}
        missing = [t for t in c.target_modules if t not in names]
        if missing:
            raise ConfigError(f"model.lora.target_modules {missing} match no module of this backbone; "
                              f"for timm ViTs use qkv, proj, fc1 or fc2")
        peft.inject_adapter_in_model(peft.LoraConfig(r=int(c.r), lora_alpha=float(c.alpha), bias="none",
                                                     lora_dropout=float(c.dropout),
                                                     target_modules=list(c.target_modules)), backbone.model)

    def to_config(self) -> Dict[str, Any]:
        return {**super().to_config(), "model_type": self.model_type, "lora": to_dict(self.lora_config)}

    @classmethod
    def from_config(cls, config: Dict[str, Any], backbone) -> "LoraClassifier":
        return cls(backbone, lora=config.get("lora"), num_classes=config.get("num_classes", 0),
                   head=config.get("head"), class_names=config.get("class_names"))

    @classmethod
    def from_section(cls, section: Any, class_names: Sequence[str]) -> "LoraClassifier":
        if section.train_backbone:
            raise ConfigError("model.type 'lora' trains LoRA weights and the head only; set model.train_backbone: false")
        if section.prompt is not None:
            raise ConfigError("model.type 'lora' takes no prompt; remove model.prompt (LoRA settings go in model.lora)")
        bb = section.backbone
        bb = bb if isinstance(bb, BackboneConfig) else from_dict(BackboneConfig, bb or {}, where="model.backbone")
        return cls(create_backbone(bb), lora=section.lora, num_classes=len(class_names), head=section.head,
                   class_names=list(class_names))


MODEL_TYPES.register("lora")(LoraClassifier)
