"""Pieces shared by the deep multi-modal text prompts (MaPLe, PromptSRC): per-layer text prompts, the depth
checks, and the image-side prompt module whose tokens another module computes."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

from ..config import ConfigError
from .base import PromptModule


def check_depth(depth: int, encoder_depth: int, field: str, encoder: str, minimum: int = 1) -> None:
    """A prompt depth must fit the encoder; the message names the field, the limit and the fix."""
    if not minimum <= depth <= encoder_depth:
        raise ConfigError(f"{field}={depth} is beyond the {encoder} encoder's depth: it has {encoder_depth} blocks, "
                          f"so {field} must be in {minimum}..{encoder_depth}; lower {field}")


def deep_text_parameters(depth: int, num_tokens: int, width: int, std: float = 0.02) -> nn.ParameterList:
    """Prompts for text blocks 1..depth-1 (block 0 gets the context itself): normal(0, std), (n, W) each."""
    return nn.ParameterList([nn.Parameter(torch.empty(num_tokens, width).normal_(std=std))
                             for _ in range(depth - 1)])


def deep_text_dict(params: nn.ParameterList) -> Dict[int, torch.Tensor]:
    return {i + 1: p for i, p in enumerate(params)}


class DrivenTokenPrompt(PromptModule):
    """Deep token prompts for the image encoder whose tokens at block i are ``source(i)`` (P, D).

    It owns no tensors: the text prompt that builds it holds them (so each is saved and trained once).
    Like VPT-deep, the tokens enter after the prefix at block 0 and are replaced at blocks 1..depth-1.
    ``norm0``: applied to the block-0 tokens only: the image tower's ``ln_pre``, which MaPLe's and
    PromptSRC's code (their ``clip/model.py``) run on the sequence after appending the first prompts, so
    those prompts pass through it (LayerNorm is per token: normalising them alone is the same); the
    deeper replacements enter raw, as there.
    """

    uses_tokens = True

    def __init__(self, kind: str, depth: int, num_tokens: int, source: Callable[[int], torch.Tensor],
                 norm0: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        super().__init__(config=None)
        self.kind = kind
        self.depth = int(depth)
        self.num_tokens = int(num_tokens)
        object.__setattr__(self, "_source", source)  # not a submodule: its owner registers the tensors
        object.__setattr__(self, "_norm0", norm0)  # the frozen backbone's module: not registered here either

    @property
    def first_layer(self) -> int:
        return 0

    def has_tokens(self, i: int) -> bool:
        return i < self.depth

    def tokens(self, i: int, batch_size: int) -> Optional[torch.Tensor]:
        if i >= self.depth:
            return None
        t = self._source(i)
        if i == 0 and self._norm0 is not None:
            t = self._norm0(t)
        return t.unsqueeze(0).expand(batch_size, -1, -1)  # (B, P, D)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_tokens={self.num_tokens}, depth={self.depth}"


LN_PRE_HELP = ("the image prompts of block 0 pass through the image tower's ln_pre, as in the paper's code "
               "(reference); false: they enter after it, like VPT-deep (vpt's placement before 0.x; 1e-2 on the logits)")


def first_layer_norm(side, config):
    """The block-0 norm for a ``DrivenTokenPrompt`` (``config.vision_ln_pre``): the tower's ln_pre or None."""
    return side.vision_ln_pre if getattr(config, "vision_ln_pre", False) else None


def vision_layout_or_refuse(side, kind: str):
    layout = side.vision_layout
    if layout is None:
        raise ConfigError(f"text prompt kind {kind!r} puts prompts inside the image encoder too, and this CLIP "
                          f"image tower has no token sequence (it needs open_clip's VisionTransformer); use coop, "
                          f"cocoop or kgcoop with this backbone")
    return layout
