"""PromptSRC (Khattak et al. 2023, "Self-regulating Prompts: Foundational Model Adaptation without Forgetting").

Independent deep prompts in both encoders (text: the context v_0 at block 0, learned P_j at blocks
1..J_t-1; image: P tokens after the class token, replaced at blocks 1..J_v-1), regularised by the frozen
model on every training batch:
    L_SCL-text   = text_weight  * mean |t~ - t|      (prompted vs frozen unit-norm class embeddings;
                                                     frozen: mean over templates, then normalised)
    L_SCL-image  = image_weight * mean |x~ - x|      (prompted vs frozen unit-norm image embeddings)
    L_SCL-logits = sum KL(softmax(z) || softmax(z~)) / numel(z~), z = scale * x t^T the frozen logits
    L = CE + L_SCL-text + L_SCL-image + L_SCL-logits
and Gaussian prompt aggregation (GPA): after epoch e (1..E) the prompts are added to a running sum with
weight w_e = N(e; gpa_mean, gpa_std) / sum_k N(k; gpa_mean, gpa_std); after the last epoch the prompts
become that weighted sum. Paper settings: 4+4 tokens, depth 9+9, weights 25 and 10, GPA N(15, 1) over 20
epochs. The frozen text templates: by default the paper's code's 60 (``templates: promptsrc60``: the first
60 of OpenAI's 80 ImageNet templates, "a photo of a {c}." first, in its order); ``openai`` takes all 80.
As in the paper's code the block-0 image prompts pass through the tower's ``ln_pre`` (``vision_ln_pre``;
false: they enter after it, like VPT-deep).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, option
from .base import PromptModule
from .deep_text import (LN_PRE_HELP, DrivenTokenPrompt, check_depth, deep_text_dict, deep_text_parameters,
                        first_layer_norm, vision_layout_or_refuse)
from .text import ClipStep, TextContext, TextContextConfig, TextSide, register_text_kind


MAX_VISION_TOKENS = 1024  # a bound checked before allocating (an artifact's config is data)


@dataclass
class PromptSRCConfig(TextContextConfig):
    num_tokens: Optional[int] = option(4, "text prompt tokens per layer (paper: 4, init 'a photo of a')",
                                       range=(1, 1024))
    init: Optional[str] = option("a photo of a", "init the first text prompts from these words")
    text_depth: int = option(9, "prompted text blocks (paper: 9; cross-dataset: 3)", range=(1, 4096))
    vision_tokens: int = option(4, "image prompt tokens per layer (paper: 4)", range=(0, 1024))
    vision_depth: int = option(9, "prompted image blocks (paper: 9; cross-dataset: 3); 0: text prompts only",
                               range=(0, 4096))
    deep_init_std: float = option(0.02, "normal init std of the deeper text prompts and the image prompts",
                                  range=(0.0, 1e3))
    text_weight: float = option(25.0, "weight of L_SCL-text (paper: 25)", range=(0.0, None))
    image_weight: float = option(10.0, "weight of L_SCL-image (paper: 10)", range=(0.0, None))
    logits_weight: float = option(1.0, "weight of L_SCL-logits (paper: 1)", range=(0.0, None))
    templates: Union[str, List[str]] = option("promptsrc60", "frozen text features: promptsrc60 (the paper's code's 60) | "
                                                           "openai (80) | simple | a file | a list")
    vision_ln_pre: bool = option(True, LN_PRE_HELP)
    gpa_mean: float = option(15.0, "Gaussian prompt aggregation: mean epoch (1-based; paper: 15 of 20)")
    gpa_std: float = option(1.0, "Gaussian prompt aggregation: std in epochs (paper: 1)", range=(1e-6, None))


def gpa_weights(epochs: int, mean: float, std: float) -> List[float]:
    """w_e for e = 1..epochs: a Gaussian density at e, normalised to sum to one."""
    dens = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, epochs + 1)]
    total = sum(dens)
    if total == 0.0:
        raise ConfigError(f"text.gpa_mean={mean} with text.gpa_std={std} puts no weight on epochs 1..{epochs}; "
                          f"choose a mean inside the run or a wider std")
    return [d / total for d in dens]


@register_text_kind("promptsrc", PromptSRCConfig, help="CLIP PromptSRC: deep prompts in both encoders + "
                                                        "self-consistency losses + Gaussian prompt aggregation")
class PromptSRC(TextContext):

    def __init__(self, config: PromptSRCConfig, side: TextSide):
        if config.class_specific or config.position != "end":
            raise ConfigError("PromptSRC shares one context placed before the class name; set "
                              "text.class_specific: false and text.position: end")
        if config.gpa_std <= 0 or min(config.text_weight, config.image_weight, config.logits_weight) < 0:
            raise ConfigError("text.gpa_std must be > 0 and the loss weights >= 0")
        check_depth(config.text_depth, side.text_depth, "text.text_depth", "text")
        if config.vision_depth:
            layout = vision_layout_or_refuse(side, config.kind)
            check_depth(config.vision_depth, layout.depth, "text.vision_depth", "image", minimum=0)
            if not 1 <= config.vision_tokens <= MAX_VISION_TOKENS:
                raise ConfigError(f"text.vision_tokens must be in 1..{MAX_VISION_TOKENS} with vision_depth > 0, "
                                  f"got {config.vision_tokens}")
        super().__init__(config, side.token_embedding, side.tokenizer, side.class_names)
        self.text_deep = deep_text_parameters(config.text_depth, self.num_tokens, side.text_width,
                                              config.deep_init_std)
        vision = None
        if config.vision_depth:
            D = side.vision_layout.embed_dim
            self.vision_prompts = nn.ParameterDict({  # one (P, D) per prompted image block, as vpt_deep's
                str(j): nn.Parameter(torch.empty(config.vision_tokens, D).normal_(std=config.deep_init_std))
                for j in range(config.vision_depth)})
            vision = DrivenTokenPrompt(self.kind, config.vision_depth, config.vision_tokens,
                                       lambda j: self.vision_prompts[str(j)], norm0=first_layer_norm(side, config))
        object.__setattr__(self, "_vision", vision)  # the CLIP model registers it as its image prompt
        self._gpa: Optional[Dict[str, torch.Tensor]] = None

    def deep_text_prompts(self) -> Dict[int, torch.Tensor]:
        return deep_text_dict(self.text_deep)

    def vision_prompt(self) -> Optional[PromptModule]:
        return self._vision

    # --- self-regulating consistency ------------------------------------------------------------------
    def consistency_losses(self, step: ClipStep) -> Dict[str, torch.Tensor]:
        """The three L_SCL terms (weighted) for one batch."""
        c = self.config
        frozen_text = step.frozen_text_features(self.config.templates)  # (C, E)
        frozen_image = step.frozen_image_features()  # (B, E)
        zs_logits = step.logit_scale * frozen_image.float() @ frozen_text.float().t()  # (B, C)
        logits = step.logits.float()
        return {
            "text": c.text_weight * F.l1_loss(step.text_features.float(), frozen_text.float()),
            "image": c.image_weight * F.l1_loss(step.image_features.float(), frozen_image.float()),
            "logits": c.logits_weight * F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1),
                                                 reduction="sum", log_target=True) / logits.numel(),
        }

    def auxiliary_loss(self, step: ClipStep) -> Optional[torch.Tensor]:
        return sum(self.consistency_losses(step).values())

    # --- Gaussian prompt aggregation ------------------------------------------------------------------
    def end_epoch(self, epoch: int, epochs: int) -> None:
        w = gpa_weights(epochs, self.config.gpa_mean, self.config.gpa_std)[epoch]
        with torch.no_grad():
            current = {n: p.detach().float() for n, p in self.named_parameters() if p.requires_grad}
            if epoch == 0 or self._gpa is None:
                self._gpa = {n: w * t for n, t in current.items()}
            else:
                for n, t in current.items():
                    self._gpa[n] += w * t
            if epoch == epochs - 1:  # the aggregate becomes the prompts
                params = dict(self.named_parameters())
                for n, t in self._gpa.items():
                    params[n].copy_(t.to(params[n].dtype))

    def run_state(self) -> Dict[str, torch.Tensor]:
        return {f"gpa.{n}": t.cpu().clone() for n, t in (self._gpa or {}).items()}

    def load_run_state(self, state: Mapping[str, torch.Tensor]) -> None:
        gpa = {k[4:]: v for k, v in state.items() if k.startswith("gpa.")}
        params = dict(self.named_parameters())
        bad = sorted(n for n, t in gpa.items() if n not in params or t.shape != params[n].shape)
        if bad:
            raise ConfigError(f"the run state's prompt aggregate does not fit this model ({bad[:3]}); resume with "
                              f"the config the run was started with")
        self._gpa = {n: t.to(params[n].device, torch.float32) for n, t in gpa.items()} or None

    def extra_repr(self) -> str:
        c = self.config
        return (f"num_tokens={self.num_tokens}, text_depth={c.text_depth}, vision_tokens={c.vision_tokens}, "
                f"vision_depth={c.vision_depth}")
