"""LoRA baseline (``model.type: lora``): the frozen backbone with peft's LoRA on chosen linear layers and the
usual head, trained and saved through the same engine and artifact format as prompts.

peft is an optional dependency (``pip install "vpt[bench]"`` or ``pip install peft``). LoRA adapters are
injected into the library model with ``peft.inject_adapter_in_model``; vpt's block loop then runs the
library's own (now LoRA-wrapped) layers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .backbones import BackboneConfig, create_backbone
from .config import Checked, ConfigError, from_dict, option, to_dict
from .model import ClassifierSections, PromptedModel
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


@dataclass
class LoraSections(ClassifierSections):
    """A LoRA classifier's artifact: the classifier's sections plus ``lora``."""
    lora: LoraConfig = option(default_factory=LoraConfig, help="peft LoRA settings (r, alpha, dropout, "
                                                               "target_modules)")


class LoraClassifier(PromptedModel):
    """Frozen backbone + LoRA (peft) + head. ``vpt.create_model``'s arguments plus ``lora``."""

    model_type = "lora"
    task = "classification"  # the vpt task that evaluates / predicts its artifacts (vpt.Artifact.task)
    config_sections = LoraSections

    def __init__(self, backbone, lora: Optional[Dict[str, Any]] = None, num_classes: int = 0, head=None,
                 class_names: Optional[Sequence[str]] = None):
        try:
            import peft
        except ImportError:
            raise ImportError("model.type 'lora' needs peft: pip install peft") from None
        super().__init__(backbone, prompt=None, num_classes=num_classes, head=head,
                         class_names=list(class_names) if class_names is not None else None)
        self.lora_config = from_dict(LoraConfig, lora or {}, where="model.lora")
        c = self.lora_config
        targets = _check_targets(c.target_modules, [n for n, _ in backbone.model.named_modules() if n])
        peft.inject_adapter_in_model(peft.LoraConfig(r=int(c.r), lora_alpha=float(c.alpha), bias="none",
                                                     lora_dropout=float(c.dropout), target_modules=targets),
                                     backbone.model)
        # artifacts hold LoRA tensors under peft's saved names (what get_peft_model_state_dict writes, without
        # the in-memory adapter name), so they do not depend on peft's internal module layout
        self.register_load_state_dict_pre_hook(_saved_to_module_names)

    def train(self, mode: bool = True):
        super().train(mode)  # the frozen backbone stays in eval ...
        for name, m in self.backbone.model.named_modules():
            if name.endswith("lora_dropout"):
                m.train(mode)  # ... but LoRA's own dropout is part of what trains
        return self

    def _peft_names(self) -> Dict[str, str]:
        """peft's saved name (under backbone.model.) -> this model's parameter name, matched by tensor identity."""
        from peft.utils import get_peft_model_state_dict
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        saved = get_peft_model_state_dict(self.backbone.model)
        if any(p.is_meta for p in params.values()):  # no storage to match on (vpt.artifact measures on meta):
            # peft's naming rule instead, the adapter name dropped from the module path
            by_name = {n[len("backbone.model."):].replace(".default.", "."): n for n in params
                       if n.startswith("backbone.model.")}
            return {"backbone.model." + k: by_name[k] for k in saved if k in by_name}
        own = {p.data_ptr(): n for n, p in params.items()}
        return {"backbone.model." + k: own[t.data_ptr()] for k, t in saved.items() if t.data_ptr() in own}

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        tensors = super().trainable_state_dict()
        for saved, name in self._peft_names().items():
            tensors[saved] = tensors.pop(name)
        return tensors

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

def _saved_to_module_names(module, state_dict, prefix, *_):
    """load_state_dict pre-hook: peft's saved LoRA names -> the in-memory parameter names."""
    for saved, name in module._peft_names().items():
        if prefix + saved in state_dict and saved != name:
            state_dict[prefix + name] = state_dict.pop(prefix + saved)


_MAX_PATTERN = 500  # characters of a target_modules regex (it may come from an artifact)


def _check_targets(targets: Union[List[str], str], module_names: List[str]) -> Union[List[str], str]:
    """peft's target_modules (names / suffixes, or one regex), checked against the backbone's modules the way
    peft matches them; a pattern that matches nothing is an error naming the forms and some module names."""
    import peft
    from peft.tuners.tuners_utils import check_target_module_exists
    if isinstance(targets, str):
        if len(targets) > _MAX_PATTERN:
            raise ConfigError(f"model.lora.target_modules regex is {len(targets)} characters; at most {_MAX_PATTERN}")
        try:
            re.compile(targets)
        except re.error as e:
            raise ConfigError(f"model.lora.target_modules {targets!r} is not a valid regular expression ({e})") from None
    elif not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"model.lora.target_modules must be a list of module names / suffixes or one regex string, "
                          f"got {targets!r}")
    else:
        targets = list(targets)
    def matches(t):
        probe = peft.LoraConfig(target_modules=t)
        return any(check_target_module_exists(probe, n) for n in module_names)
    unmatched = ([] if matches(targets) else [targets]) if isinstance(targets, str) else \
        [t for t in targets if not matches([t])]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in module_names})
        raise ConfigError(f"model.lora.target_modules {unmatched} match no module of this backbone; use module "
                          f"names or suffixes (e.g. qkv, blocks.11.attn.qkv) or one regex over full names; this "
                          f"backbone's module names end in: {', '.join(leaves[:25])}")
    return targets
