"""CLIP: an open_clip model whose image tower is prompted (pixel / token prompts) and whose classes are the
text tower's embeddings of class-name prompts: zero-shot (frozen text classifier), prompted image tower,
or learnable text context (CoOp). Trains exactly as classification does (same data, loss and metrics);
the model is ``vpt.clip.PromptedCLIP``. Zero-shot evaluation without training: ``vpt.zeroshot``
(``vpt zeroshot``).

Recipes may also say ``task: classification`` with ``model.type: clip``; ``task: clip`` makes the type the
default and refuses any other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from typing import Any

from ..backbones.base import BackboneConfig
from ..config import option
from ..errors import ConfigError
from ..registry import TASKS
from .classification import ClassificationTask, ModelSection, RunConfig


@dataclass
class ClipModelSection(ModelSection):
    type: str = "clip"  # vpt.clip.PromptedCLIP
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(name="open_clip:ViT-B-32"))  # CLIP model
    head: Any = option(help="zeroshot | linear_init | linear (vpt.clip heads) and templates",
                       default_factory=lambda: {"kind": "zeroshot"})


@dataclass
class ClipRunConfig(RunConfig):
    task: str = "clip"  # key into vpt.registry.TASKS
    model: ClipModelSection = field(default_factory=ClipModelSection)


@TASKS.register("clip", config_cls=ClipRunConfig, help="CLIP classification: prompted image tower and/or CoOp text")
class ClipTask(ClassificationTask):
    name = "clip"
    config_cls = ClipRunConfig

    def validate(self) -> None:
        if self.cfg.model.type != "clip":
            raise ConfigError(f"task clip trains model.type 'clip', got {self.cfg.model.type!r}; drop model.type "
                              f"or use task: classification")
        super().validate()
