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

from ..config import TEXT_SECTION, Checked, ConfigError, option, to_dict
from ..registry import PROMPTS
from .base import PromptModule


POSITIONS = ("end", "middle", "front")


@dataclass
class TextContextConfig(Checked):
    needs: ClassVar[str] = "text"
    num_tokens: Optional[int] = option(None, "M context vectors (null: 16, as CoOp, or the token count of init)",
                                       range=(1, 1024))
    class_specific: bool = option(False, "one context per class (CoOp's CSC) instead of one shared by all classes")
    position: str = option("end", "where the class name goes", choices=POSITIONS)
    init: Optional[str] = option(None, "init the context from these words (e.g. 'a photo of a'); null: "
                                       "normal(init_std)")
    init_std: float = option(0.02, "std of the random init (CoOp: 0.02)", range=(0.0, 1e3))


def text_kinds() -> List[str]:
    """Registered prompt kinds that belong in a CLIP model's ``text`` (CoOp and its family)."""
    out = []
    for name in PROMPTS.names():
        try:
            entry = PROMPTS.get(name)
        except ImportError:  # an optional dependency is missing
            continue
        if getattr(entry.config_cls, "needs", None) == "text":
            out.append(name)
    return out


def resolve_text_config(text: Union[None, Mapping[str, Any], TextContextConfig]) -> Optional[TextContextConfig]:
    """None | {'kind': a text prompt kind (default: CoOp), ...} | a config -> its config."""
    return TEXT_SECTION.resolve(text, where="text")  # checked by the config class itself


def _token_count(tokenizer: Callable, text: str) -> int:
    """Tokens of ``text`` without SOS / EOS / padding (open_clip tokenizers pad with 0)."""
    with torch.device("cpu"):  # token ids are data: on the CPU even while a model is built on the meta device
        return int((tokenizer([text])[0] != 0).sum()) - 2


@dataclass
class TextSide:
    """What a text prompt learns against, handed over by the CLIP model (no backbone import here)."""
    token_embedding: nn.Embedding  # the frozen token embedding
    tokenizer: Callable  # open_clip's tokenizer
    class_names: List[str]  # the words put in the prompts
    text_depth: int  # blocks of the text transformer
    text_width: int  # W, the text transformer width
    image_dim: int  # E, the joint embedding size
    vision_layout: Any = None  # the image tower's TokenLayout (None: no token sequence)
    vision_ln_pre: Any = None  # the image tower's ln_pre (open_clip), applied to the block-0 prompts of MaPLe /
    # PromptSRC as their reference code does; None: the tower has none


class TextContext(nn.Module):
    """CoOp: builds the (C, L, W) prompt embeddings of all classes from the learnable context.

    ``tokens`` (C, L) are the tokenised prompts (context words as placeholders): the text encoder pools
    at their EOS position. Subclasses (the CoOp family) add to it through the hooks below; the CLIP
    model calls them and never asks which method it holds.
    """

    partial_init = False  # True: fewer num_tokens than `init` words learn the first ones, the rest stay words
    per_image = False  # True: the prompts depend on each image (CoCoOp); see image_logits

    def __init__(self, config: TextContextConfig, token_embedding: nn.Embedding, tokenizer: Callable,
                 class_names: Sequence[str]):
        super().__init__()
        self.config = config
        self.kind = config.kind  # the registered name (stamped on the config class by the registry)
        C, width = len(class_names), token_embedding.weight.shape[1]
        limit = int(getattr(tokenizer, "context_length", 77)) - 3  # SOS, '.', EOS
        if (config.num_tokens or 0) > limit:  # checked before anything is allocated (artifacts are data)
            raise ConfigError(f"text.num_tokens={config.num_tokens} does not fit the text context length "
                              f"{limit + 3}; use at most {limit}")
        if config.init:
            n_words = _token_count(tokenizer, config.init)
            M = n_words if config.num_tokens is None else config.num_tokens
            if M > n_words or (M < n_words and not self.partial_init):
                raise ConfigError(f"text.init {config.init!r} is {n_words} tokens but text.num_tokens is "
                                  f"{config.num_tokens}; drop num_tokens or make them agree")
            if M < n_words and config.position != "end":
                raise ConfigError(f"text.num_tokens {M} < the {n_words} tokens of text.init needs "
                                  f"text.position end, got {config.position!r}")
            words = config.init
        else:
            M = config.num_tokens or 16
            n_words = M
            words = " ".join(["X"] * M)
        self.num_tokens = M
        prompts = [f"{words} {name}." for name in class_names]  # CoOp's prompt text
        with torch.device("cpu"):
            tokens = tokenizer(prompts).to(token_embedding.weight.device)  # (C, L)
        L = tokens.shape[1]
        name_lens = [_token_count(tokenizer, name) for name in class_names]
        for name, n in zip(class_names, name_lens):
            if 1 + n_words + n + 2 > L:  # SOS + context + name + '.' + EOS
                raise ConfigError(f"class name {name!r} does not fit the text context length {L} with "
                                  f"{n_words} context tokens; use fewer text.num_tokens or a shorter name")
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
        C = self.prefix.shape[0]
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(C, -1, -1)  # (C, M, W)
        return self.assemble(ctx)

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Context (C, M, W) -> (C, L, W) prompt embeddings with the class names in place."""
        ctx = ctx.to(self.prefix.dtype)
        M, pos = self.num_tokens, self.config.position
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

    # --- hooks the CLIP model calls (CoOp: none of them does anything) -------------------------------
    def deep_text_prompts(self) -> Dict[int, torch.Tensor]:
        """{text block index: (n, W) prompts replacing tokens 1..n at that block's input}."""
        return {}

    def vision_prompt(self) -> Optional[PromptModule]:
        """The image-encoder prompt this method drives (MaPLe, PromptSRC), or None."""
        return None

    def auxiliary_loss(self, step: "ClipStep") -> Optional[torch.Tensor]:
        """Loss terms besides cross-entropy for one training batch (KgCoOp, PromptSRC), or None."""
        return None

    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Called after each finished training epoch (PromptSRC's prompt aggregation)."""

    def run_state(self) -> Dict[str, torch.Tensor]:
        """Tensors a resumed run needs besides the trainable ones."""
        return {}

    def load_run_state(self, state: Mapping[str, torch.Tensor]) -> None:
        pass

    def extra_repr(self) -> str:
        c = self.config
        return f"num_tokens={self.num_tokens}, class_specific={c.class_specific}, position={c.position!r}"


@dataclass
class ClipStep:
    """One training batch as a text prompt's auxiliary loss sees it (built by the CLIP model)."""
    image_features: torch.Tensor  # (B, E) unit-norm prompted image embeddings
    text_features: Optional[torch.Tensor]  # (C, E) unit-norm prompted class embeddings (None: per-image)
    logits: torch.Tensor  # (B, C) the prompted logits
    logit_scale: float  # the multiplier of the cosine logits
    frozen_image_features: Callable[[], torch.Tensor]  # () -> (B, E) unit-norm, the unprompted image tower
    frozen_text_features: Callable[[Any], torch.Tensor]  # templates (a set name, file or list) -> (C, E) unit-norm


def text_config_to_dict(cfg: TextContextConfig, num_tokens: int) -> Dict[str, Any]:
    """The resolved config for an artifact: num_tokens filled in."""
    return {**to_dict(cfg), "num_tokens": num_tokens}


def refuse_as_image_prompt(kind: str):
    """The PROMPTS factory of a text kind: it builds the text side only from a CLIP model's ``text``."""
    def factory(config, layout, data_config, side: Optional[TextSide] = None, **_):
        if side is None:
            raise ConfigError(f"prompt kind {kind!r} is a CLIP text prompt: put it in a CLIP model's text config "
                              f"(model.type: clip, model.text: {{kind: {kind}}}), not in the image prompt")
        return BUILDERS[kind](config, side)
    return factory


BUILDERS: Dict[str, Callable[[Any, TextSide], TextContext]] = {}


def register_text_kind(kind: str, config_cls, help: str):
    """Register a text prompt class under ``kind`` (its one mention): ``cls(config, side)`` builds it;
    listed by ``vpt list``."""
    def deco(cls):
        BUILDERS[kind] = cls
        PROMPTS.register(kind, config_cls, help=help)(refuse_as_image_prompt(kind))
        return cls
    return deco


@register_text_kind("coop", TextContextConfig, help="CLIP learnable text context (CoOp); goes in a clip model's "
                                                     "`text`, combinable with any visual prompt")
def _coop(config: TextContextConfig, side: TextSide) -> TextContext:
    return TextContext(config, side.token_embedding, side.tokenizer, side.class_names)


__all__: List[str] = ["TextContextConfig", "TextContext", "TextSide", "ClipStep", "resolve_text_config",
                      "text_config_to_dict", "register_text_kind", "text_kinds"]
