"""Learnable text context for CLIP (CoOp, Zhou et al. 2022, "Learning to Prompt for Vision-Language Models").

M context vectors replace a hand-written template: the prompt of class i is
``[SOS] [V]_1 ... [V]_M [CLASS_i] . [EOS]`` (class token at the end; or in the middle / at the front),
embedded with the frozen token embedding and run through the frozen text encoder. The context is
shared by all classes, or one per class ("class-specific context", CSC).

This is a text prompt: it goes into a CLIP model's ``text`` config (``vpt.clip.PromptedCLIP``), not into
the image encoder's ``prompt``. It never imports a backbone library: the CLIP model hands it the token
embedding and the tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..config import ConfigError, from_dict
from ..registry import PROMPTS


@dataclass
class TextContextConfig:
    kind: ClassVar[str] = "coop"
    needs: ClassVar[str] = "text"
    num_tokens: Optional[int] = None  # M context vectors; None: 16 (CoOp), or the token count of `init`
    class_specific: bool = False  # one context per class (CoOp's CSC) instead of one shared by all classes
    position: str = "end"  # where the class name goes: end | middle | front
    init: Optional[str] = None  # init the context from these words (e.g. "a photo of a"); None: normal(init_std)
    init_std: float = 0.02  # std of the random init (CoOp: 0.02)


POSITIONS = ("end", "middle", "front")


def resolve_text_config(text: Union[None, Mapping[str, Any], TextContextConfig]) -> Optional[TextContextConfig]:
    if text is None or isinstance(text, TextContextConfig):
        return text
    data = dict(text)
    kind = data.pop("kind", "coop")
    if kind != "coop":
        raise ConfigError(f"unknown text context kind {kind!r}; available: coop")
    cfg = from_dict(TextContextConfig, data, where="text")
    if cfg.position not in POSITIONS:
        raise ConfigError(f"unknown text.position {cfg.position!r}; available: {', '.join(POSITIONS)}")
    if cfg.num_tokens is not None and cfg.num_tokens < 1:
        raise ConfigError(f"text.num_tokens must be >= 1, got {cfg.num_tokens}")
    return cfg


def _token_count(tokenizer: Callable, text: str) -> int:
    """Tokens of ``text`` without SOS / EOS / padding (open_clip tokenizers pad with 0)."""
    return int((tokenizer([text])[0] != 0).sum()) - 2


class TextContext(nn.Module):
    """Builds the (C, L, W) prompt embeddings of all classes from the learnable context.

    ``tokens`` (C, L) are the tokenised prompts (context words as placeholders): the text encoder pools
    at their EOS position.
    """

    kind = "coop"

    def __init__(self, config: TextContextConfig, token_embedding: nn.Embedding, tokenizer: Callable,
                 class_names: Sequence[str]):
        super().__init__()
        self.config = config
        C, width = len(class_names), token_embedding.weight.shape[1]
        if config.init:
            M = _token_count(tokenizer, config.init)
            if config.num_tokens is not None and config.num_tokens != M:
                raise ConfigError(f"text.init {config.init!r} is {M} tokens but text.num_tokens is "
                                  f"{config.num_tokens}; drop num_tokens or make them agree")
            words = config.init
        else:
            M = config.num_tokens or 16
            words = " ".join(["X"] * M)
        self.num_tokens = M
        prompts = [f"{words} {name}." for name in class_names]  # CoOp's prompt text
        tokens = tokenizer(prompts)  # (C, L)
        L = tokens.shape[1]
        name_lens = [_token_count(tokenizer, name) for name in class_names]
        for name, n in zip(class_names, name_lens):
            if 1 + M + n + 2 > L:  # SOS + context + name + '.' + EOS
                raise ConfigError(f"class name {name!r} does not fit the text context length {L} with "
                                  f"{M} context tokens; use fewer text.num_tokens or a shorter name")
        with torch.no_grad():
            emb = token_embedding(tokens).detach()  # (C, L, W)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # (C, 1, W): SOS
        self.register_buffer("suffix", emb[:, 1 + M:].clone(), persistent=False)  # (C, L-1-M, W): name . EOS pad
        self.name_lens = name_lens
        ctx = emb[0, 1:1 + M].clone() if config.init else torch.empty(M, width).normal_(std=config.init_std)
        if config.class_specific:
            ctx = ctx.unsqueeze(0).repeat(C, 1, 1) if config.init else torch.empty(C, M, width).normal_(
                std=config.init_std)  # (C, M, W)
        self.ctx = nn.Parameter(ctx)  # (M, W) shared | (C, M, W) class-specific

    def forward(self) -> torch.Tensor:
        """(C, L, W) prompt embeddings."""
        C, M = self.prefix.shape[0], self.num_tokens
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(C, -1, -1)  # (C, M, W)
        ctx = ctx.to(self.prefix.dtype)
        pos = self.config.position
        if pos == "end":
            return torch.cat([self.prefix, ctx, self.suffix], dim=1)  # (C, 1+M+rest, W)
        half, out = M // 2, []
        for i, n in enumerate(self.name_lens):
            pre, name, rest = self.prefix[i:i + 1], self.suffix[i:i + 1, :n], self.suffix[i:i + 1, n:]
            c = ctx[i:i + 1]
            if pos == "middle":
                out.append(torch.cat([pre, c[:, :half], name, c[:, half:], rest], dim=1))  # (1, L, W)
            else:  # front
                out.append(torch.cat([pre, name, c, rest], dim=1))
        return torch.cat(out, dim=0)  # (C, L, W)

    def extra_repr(self) -> str:
        c = self.config
        return f"num_tokens={self.num_tokens}, class_specific={c.class_specific}, position={c.position!r}"


def text_config_to_dict(cfg: TextContextConfig, num_tokens: int) -> Dict[str, Any]:
    """The resolved config for an artifact: num_tokens filled in."""
    return {"kind": "coop", "num_tokens": num_tokens, "class_specific": cfg.class_specific,
            "position": cfg.position, "init": cfg.init, "init_std": cfg.init_std}


@PROMPTS.register("coop", TextContextConfig, help="CLIP learnable text context (CoOp); goes in a clip model's "
                                                  "`text`, combinable with any visual prompt")
def _coop(config, layout, data_config, **_):
    raise ConfigError("prompt kind 'coop' is a text prompt: put it in a CLIP model's text config "
                      "(model.type: clip, model.text: {num_tokens: 16}), not in the image prompt")


__all__: List[str] = ["TextContextConfig", "TextContext", "resolve_text_config", "text_config_to_dict"]
