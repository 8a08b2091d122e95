"""MaPLe (Khattak et al. 2023, "MaPLe: Multi-modal Prompt Learning").

Deep prompts in both encoders, the image ones produced from the text ones by a coupling function:
text block 0 sees the context v_0 (n tokens right after SOS, from "a photo of a": its first n words are
learned, the rest stay words); text blocks j = 1..J-1 replace those n tokens with learned P_j (n, W).
The image prompts of block j are the coupling of the text prompts of block j:
    vision_j = F_j(P_j) with F_j a Linear W -> D (F_0 applied to v_0),
inserted after the class token at block 0 and replaced at blocks 1..J-1 (J = prompt depth, paper: 9
of 12, n = 2). Nothing else is trained; the encoders stay frozen.

By default it computes what the paper's code (muzairkhattak/multimodal-prompt-learning) computes: the
block-0 image prompts pass through the tower's ``ln_pre`` (``vision_ln_pre``), and F_1..F_{J-1} start as
copies of one Linear (``_get_clones``), F_0 its own (``coupling_init: reference``). Opt-outs:
``vision_ln_pre: false`` (the prompts enter after ln_pre, like VPT-deep), ``coupling_init: independent``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from ..config import ConfigError, option
from .base import PromptModule
from .deep_text import (LN_PRE_HELP, DrivenTokenPrompt, check_depth, deep_text_dict, deep_text_parameters,
                        first_layer_norm, vision_layout_or_refuse)
from .text import TextContext, TextContextConfig, TextSide, register_text_kind


@dataclass
class MapleConfig(TextContextConfig):
    num_tokens: Optional[int] = option(2, "n prompt tokens per layer in each encoder (paper: 2)", range=(1, 1024))
    init: Optional[str] = option("a photo of a", "first num_tokens words are learned, the rest stay fixed words")
    depth: int = option(9, "J: prompted blocks in both encoders (paper: 9; cross-dataset: 3)", range=(1, 4096))
    deep_init_std: float = option(0.02, "normal init std of the deeper text prompts", range=(0.0, 1e3))
    vision_ln_pre: bool = option(True, LN_PRE_HELP)
    coupling_init: str = option("reference", "reference: F_1..F_{J-1} start as copies of one Linear, F_0 its own "
                                             "(the paper's code); independent: each its own random Linear",
                                choices=("reference", "independent"))


@register_text_kind("maple", MapleConfig, help="CLIP MaPLe: deep prompts in both encoders, the vision ones "
                                                "a coupling (Linear) of the text ones")
class Maple(TextContext):
    partial_init = True

    def __init__(self, config: MapleConfig, side: TextSide):
        if config.class_specific or config.position != "end":
            raise ConfigError("MaPLe shares one context placed before the class name; set text.class_specific: "
                              "false and text.position: end")
        layout = vision_layout_or_refuse(side, config.kind)
        check_depth(config.depth, side.text_depth, "text.depth", "text")
        check_depth(config.depth, layout.depth, "text.depth", "image")
        super().__init__(config, side.token_embedding, side.tokenizer, side.class_names)
        W, D = side.text_width, layout.embed_dim
        self.text_deep = deep_text_parameters(config.depth, self.num_tokens, W, config.deep_init_std)
        if config.coupling_init == "reference":  # F_0, then one Linear cloned J-1 times (copy.deepcopy)
            import copy
            first, single = nn.Linear(W, D), nn.Linear(W, D)
            self.couplings = nn.ModuleList([first] + [copy.deepcopy(single) for _ in range(config.depth - 1)])
        else:
            self.couplings = nn.ModuleList([nn.Linear(W, D) for _ in range(config.depth)])  # F_0 .. F_{J-1}
        vision = DrivenTokenPrompt(self.kind, config.depth, self.num_tokens, self.vision_tokens,
                                   norm0=first_layer_norm(side, config))
        object.__setattr__(self, "_vision", vision)  # the CLIP model registers it as its image prompt

    def text_prompt_at(self, j: int) -> torch.Tensor:
        """(n, W): the text prompts of block j (the context for j = 0)."""
        return self.ctx if j == 0 else self.text_deep[j - 1]

    def vision_tokens(self, j: int) -> torch.Tensor:
        """(n, D) = F_j(text prompts of block j)."""
        return self.couplings[j](self.text_prompt_at(j))

    def deep_text_prompts(self) -> Dict[int, torch.Tensor]:
        return deep_text_dict(self.text_deep)

    def vision_prompt(self) -> Optional[PromptModule]:
        return self._vision

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, depth={self.config.depth}"
