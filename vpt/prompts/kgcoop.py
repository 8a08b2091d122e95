"""KgCoOp (Yao et al. 2023, "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization").

CoOp plus a term that keeps each learned class embedding close to the hand-crafted prompt's frozen one:
    L = CE + lambda * (1 - mean_i cos(w_i, w_i^clip))
with w_i the unit-norm learned-prompt text feature of class i and w_i^clip that of the hand-crafted
prompt ("a photo of a {c}."; on CoOp's datasets ``vpt train`` sets the paper's code's prompt of the dataset,
``vpt.data.benchmarks.KGCOOP_TEMPLATES``, unless the recipe sets ``text.templates``). On unit vectors
1 - cos = ||w - w^clip||^2 / 2: the paper's squared distance, written as its code computes it. lambda = 8.0 (base-to-novel), context "a photo of a" (4 tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..config import ConfigError, option
from .text import ClipStep, TextContext, TextContextConfig, TextSide, register_text_kind


@dataclass
class KgCoOpConfig(TextContextConfig):
    init: Optional[str] = option("a photo of a", "context init (paper: 'a photo of a', 4 tokens)")
    weight: float = option(8.0, "lambda, the weight of the knowledge-guided term (paper: 8.0)", range=(0.0, None))
    templates: List[str] = option(help="the hand-crafted prompt(s), '{c}' for the class name (unset on a "
                                       "CoOp dataset: the paper's code's prompt of that dataset)",
                                  default_factory=lambda: ["a photo of a {c}."])


@register_text_kind("kgcoop", KgCoOpConfig, help="CLIP KgCoOp: CoOp + weight x distance of learned to "
                                                  "hand-crafted-prompt text features")
class KgCoOp(TextContext):

    def __init__(self, config: KgCoOpConfig, side: TextSide):
        if config.weight < 0:
            raise ConfigError(f"text.weight must be >= 0, got {config.weight}")
        if not config.templates:
            raise ConfigError("text.templates is empty; give the hand-crafted prompt, e.g. ['a photo of a {c}.']")
        super().__init__(config, side.token_embedding, side.tokenizer, side.class_names)

    def auxiliary_loss(self, step: ClipStep) -> Optional[torch.Tensor]:
        hand = step.frozen_text_features(self.config.templates)  # (C, E) unit-norm, frozen
        learned = step.text_features  # (C, E) unit-norm
        score = 1.0 - F.cosine_similarity(learned.float(), hand.float(), dim=-1, eps=1e-7).mean()
        return self.config.weight * score
