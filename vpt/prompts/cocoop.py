"""CoCoOp (Zhou et al. 2022, "Conditional Prompt Learning for Vision-Language Models").

CoOp's context plus a small meta-network: each image's (unit-norm) feature x is mapped to a bias
pi(x) = W2 relu(W1 x) added to every context token, so the prompts, and the class embeddings, differ
per image:  v_m(x) = v_m + pi(x),  t_i(x) = [SOS, v_1(x) .. v_M(x), CLASS_i, '.', EOS],
logits_i(x) = scale * <x, normalize(g(t_i(x)))>.  W1: E -> E/16, W2: E/16 -> W (paper and code).

Cost: a batch of B images runs B x C prompts through the text encoder (C classes); CoCoOp trains with
batch 1 for that reason. ``max_train_prompts`` refuses a training batch above the cap (with the fix);
evaluation, which keeps no activations, runs in chunks of at most ``eval_prompts_per_chunk`` prompts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, option
from .text import TextContext, TextContextConfig, TextSide, register_text_kind

_logger = logging.getLogger(__name__)


@dataclass
class CoCoOpConfig(TextContextConfig):
    num_tokens: Optional[int] = option(4, "M context vectors (paper: 4, initialised from 'a photo of a')",
                                       range=(1, 1024))
    init: Optional[str] = option("a photo of a", "init the context from these words")
    meta_reduction: int = option(16, "hidden width of the meta-net = E // meta_reduction (paper: 16)",
                                 range=(1, 65536))
    max_train_prompts: int = option(8192, "refuse a training batch whose B x C prompts exceed this (text "
                                          "encodes per step)", range=(1, None))
    eval_prompts_per_chunk: int = option(4096, "evaluation: images per chunk = this // C (at least 1)",
                                         range=(1, None))


@register_text_kind("cocoop", CoCoOpConfig, help="CLIP CoCoOp: context + a meta-net bias from each image "
                                                  "feature (per-image text features; B x C text encodes a batch)")
class CoCoOp(TextContext):
    per_image = True

    def __init__(self, config: CoCoOpConfig, side: TextSide):
        if config.class_specific:
            raise ConfigError("CoCoOp shares one context across classes; set text.class_specific: false")
        if config.meta_reduction < 1 or config.max_train_prompts < 1 or config.eval_prompts_per_chunk < 1:
            raise ConfigError("text.meta_reduction, text.max_train_prompts and text.eval_prompts_per_chunk "
                              "must be >= 1")
        super().__init__(config, side.token_embedding, side.tokenizer, side.class_names)
        E, W = side.image_dim, side.text_width
        hidden = max(E // config.meta_reduction, 1)
        self.meta_net = nn.Sequential(nn.Linear(E, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, W))
        _logger.info("CoCoOp: each image encodes its own %d class prompts (a batch of B images = B x %d text "
                     "encodes; training refuses more than %d)", len(side.class_names), len(side.class_names),
                     config.max_train_prompts)

    def image_prompts(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, E) unit-norm image features -> (B, C, L, W) per-image prompt embeddings."""
        C = self.prefix.shape[0]
        bias = self.meta_net(image_features.to(self.ctx.dtype))  # (B, W)
        ctx = self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, M, W)
        return torch.stack([self.assemble(c.unsqueeze(0).expand(C, -1, -1)) for c in ctx])  # (B, C, L, W)

    def image_logits(self, image_features: torch.Tensor, scale: float,
                     encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """(B, E) unit-norm image features -> (B, C) logits; ``encode`` maps (N, L, W) prompts and their
        (N, L) tokens to (N, E) text embeddings."""
        B, C = image_features.shape[0], self.prefix.shape[0]
        if torch.is_grad_enabled():
            if B * C > self.config.max_train_prompts:
                raise ConfigError(f"CoCoOp: a batch of {B} images x {C} classes = {B * C} text encodes with "
                                  f"gradients, above text.max_train_prompts={self.config.max_train_prompts}; lower "
                                  f"train.batch_size (the paper uses 1; add train.grad_accum_steps) or raise the cap")
            chunk = B
        else:
            chunk = max(self.config.eval_prompts_per_chunk // C, 1)
        out = []
        for start in range(0, B, chunk):
            x = image_features[start:start + chunk]  # (b, E)
            prompts = self.image_prompts(x)  # (b, C, L, W)
            b, L = prompts.shape[0], prompts.shape[2]
            tokens = self.tokens.repeat(b, 1)  # (b*C, L)
            text = F.normalize(encode(prompts.reshape(b * C, L, -1), tokens), dim=-1).view(b, C, -1)  # (b, C, E)
            out.append(scale * torch.einsum("be,bce->bc", x, text.to(x.dtype)))  # (b, C)
        return torch.cat(out)  # (B, C)
