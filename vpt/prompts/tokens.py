"""VPT token prompts (Jia et al. 2022): shallow (first layer) and deep (every or chosen layers).

Shallow is deep with one prompted layer: prompts enter after the prefix tokens at the first prompted
layer, are replaced by that layer's own prompts at every later prompted layer, and are carried
through the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
from torch import nn

from ..config import ConfigError
from ..registry import PROMPTS
from .base import PromptModule, resolve_layers, split_per_layer, xavier_bound


@dataclass
class ShallowPromptConfig:
    kind: ClassVar[str] = "vpt_shallow"
    needs: ClassVar[str] = "tokens"  # what the backbone must offer: tokens | kv | pixels
    num_tokens: int = 10  # P prompt tokens inserted after the class/register tokens
    dropout: float = 0.0  # dropout on the prompt tokens (VPT used 0.1 on some tasks)
    project_dim: Optional[int] = None  # learn prompts in this dim, project to the width with a Linear
    init: str = "xavier_uniform"  # xavier_uniform (VPT) | normal (std 0.02) | zeros


@dataclass
class DeepPromptConfig:
    kind: ClassVar[str] = "vpt_deep"
    needs: ClassVar[str] = "tokens"
    num_tokens: int = 10  # P prompt tokens per prompted layer
    layers: Optional[List[int]] = None  # prompted block indices; None = every block
    last_k: Optional[int] = None  # prompt only the last k blocks (instead of layers)
    dropout: float = 0.0
    project_dim: Optional[int] = None
    init: str = "xavier_uniform"


class TokenPrompt(PromptModule):
    uses_tokens = True

    def __init__(self, config, layout, data_config):
        super().__init__(config)
        if layout is None:
            raise ConfigError("token prompts need a ViT-style backbone")
        L, D = layout.depth, layout.embed_dim
        if config.num_tokens < 0:
            raise ConfigError(f"prompt.num_tokens must be >= 0, got {config.num_tokens}")
        if isinstance(config, ShallowPromptConfig):
            layers = [0]
        else:
            layers = resolve_layers(config.layers, config.last_k, L)
        self.layers = layers
        self._slot = {layer: j for j, layer in enumerate(layers)}
        self.num_tokens = int(config.num_tokens)
        d = config.project_dim or D
        if config.init not in ("xavier_uniform", "normal", "zeros"):
            raise ConfigError(f"unknown prompt.init '{config.init}'; available: normal, xavier_uniform, zeros")
        # one (P, d) tensor per prompted block, named by the block index ('prompts.5'), so optimisers that
        # group parameters by layer (timm.optim layer decay) put each block's prompts in that block's group
        self.prompts = nn.ParameterDict({str(layer): nn.Parameter(torch.zeros(self.num_tokens, d)) for layer in layers})
        for p in self.prompts.values():
            if config.init == "xavier_uniform":
                b = xavier_bound(layout.patch_size, d)
                nn.init.uniform_(p, -b, b)
            elif config.init == "normal":
                nn.init.normal_(p, std=0.02)
        if config.project_dim:
            self.proj = nn.Linear(d, D)
            nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_out")
        else:
            self.proj = nn.Identity()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @property
    def first_layer(self) -> int:
        return self.layers[0] if self.num_tokens else 1 << 30

    def has_tokens(self, i):
        return self.num_tokens > 0 and i in self._slot

    def tokens(self, i, batch_size):
        if i not in self._slot or self.num_tokens == 0:
            return None
        p = self.proj(self.prompts[str(i)])  # (P, D)
        return self.dropout(p.unsqueeze(0).expand(batch_size, -1, -1))  # (B, P, D)

    def parameter_layers(self):
        layers = {n: self.layers[0] for n, _ in self.named_parameters()}  # a shared projection: the first block
        layers.update({f"prompts.{layer}": layer for layer in self.layers})
        return layers

    def upgrade_tensors(self, tensors, prefix):
        return split_per_layer(tensors, prefix + "prompts", self.layers)

    def extra_repr(self):
        return f"kind={self.kind!r}, num_tokens={self.num_tokens}, layers={self.layers}"


@PROMPTS.register("vpt_shallow", ShallowPromptConfig, help="VPT-shallow: P learnable tokens at the first block")
def _shallow(config, layout, data_config, **_):
    m = TokenPrompt(config, layout, data_config)
    m.kind = "vpt_shallow"
    return m


@PROMPTS.register("vpt_deep", DeepPromptConfig, help="VPT-deep: P learnable tokens re-inserted at every (or chosen) block")
def _deep(config, layout, data_config, **_):
    m = TokenPrompt(config, layout, data_config)
    m.kind = "vpt_deep"
    return m
