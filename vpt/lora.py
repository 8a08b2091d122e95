"""LoRA baseline (``model.type: lora``): one case of ``model.type: peft`` (vpt.peft_model) with its own short
section, ``model.lora: {r, alpha, dropout, target_modules, use_dora, use_rslora}``; built with peft's LoRA.

Its artifacts keep peft's layout (``peft.PeftModel.from_pretrained(timm_model, DIR)`` loads them); artifacts
of vpt <= 0.x (tensors under ``backbone.model.``) still load.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

from .config import Checked, from_dict, option, to_dict
from .model import ClassifierSections
from .peft_model import PeftClassifier, _check_section, _section_backbone, peft_top_keys
from .registry import MODEL_TYPES


@dataclass
class LoraConfig(Checked):
    r: int = option(8, "rank", range=(1, 4096))
    alpha: float = option(8.0, "scaling numerator (peft lora_alpha): updates are scaled by alpha / r")
    dropout: float = option(0.0, "dropout on the LoRA branch input", range=(0.0, 1.0))
    # peft's forms: a list of module names or name suffixes (timm ViT: qkv, proj, fc1, fc2; "blocks.11.attn.qkv"),
    # or one string: a regular expression the full module name must match (e.g. r".*\.(1[01])\.attn\.qkv")
    target_modules: Union[List[str], str] = option(
        help="module names or name suffixes (qkv, proj, fc1, fc2, blocks.11.attn.qkv), or one regular expression "
             "the full module name must match", default_factory=lambda: ["qkv"])
    use_dora: bool = option(False, "DoRA: a learned magnitude per output over the LoRA-updated direction")
    use_rslora: bool = option(False, "rsLoRA: scale updates by alpha / sqrt(r) instead of alpha / r")

    def peft_spec(self) -> Dict[str, Any]:
        """The same LoRA as ``model.type: peft``'s mapping (peft's field names)."""
        spec = {"peft_type": "LORA", "r": int(self.r), "lora_alpha": float(self.alpha),
                "lora_dropout": float(self.dropout), "target_modules": self.target_modules}
        if self.use_dora:
            spec["use_dora"] = True
        if self.use_rslora:
            spec["use_rslora"] = True
        return spec


@dataclass
class LoraSections(ClassifierSections):
    """A LoRA classifier's artifact: the classifier's sections plus ``lora`` (and peft's own keys)."""
    lora: LoraConfig = option(default_factory=LoraConfig, help="peft LoRA settings (r, alpha, dropout, "
                                                               "target_modules, use_dora, use_rslora)")

    foreign_keys = staticmethod(peft_top_keys)


class LoraClassifier(PeftClassifier):
    """Frozen backbone + LoRA (peft) + head. ``vpt.create_model``'s arguments plus ``lora``."""

    model_type = "lora"
    task = "classification"
    config_sections = LoraSections

    def __init__(self, backbone, lora: Optional[Dict[str, Any]] = None, num_classes: int = 0, head=None,
                 class_names: Optional[Sequence[str]] = None):
        self.lora_config = lora if isinstance(lora, LoraConfig) else from_dict(LoraConfig, lora or {},
                                                                                 where="model.lora")
        self._init_peft(backbone, self.lora_config.peft_spec(), num_classes, head, class_names, where="model.lora")

    def to_config(self) -> Dict[str, Any]:
        config = super().to_config()
        del config["peft"]
        return {**config, "lora": to_dict(self.lora_config)}

    @classmethod
    def from_config(cls, config: Dict[str, Any], backbone) -> "LoraClassifier":
        return cls(backbone, lora=config.get("lora"), num_classes=config.get("num_classes", 0),
                   head=config.get("head"), class_names=config.get("class_names"))

    @classmethod
    def from_section(cls, section: Any, class_names: Sequence[str]) -> "LoraClassifier":
        _check_section(section, "lora")
        return cls(_section_backbone(section), lora=section.lora, num_classes=len(class_names), head=section.head,
                   class_names=list(class_names))


MODEL_TYPES.register("lora")(LoraClassifier)
