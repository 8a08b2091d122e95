"""VPT token prompts (Jia et al. 2022): shallow (first layer) and deep (every or chosen layers).

Shallow is deep with one prompted layer: prompts enter after the prefix tokens at the first prompted
layer, are replaced by that layer's own prompts at every later prompted layer, and are carried
through the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional

import torch
from torch import nn

from ..config import Checked, ConfigError, FieldError, option
from ..registry import PROMPTS
from .base import PromptModule, resolve_layers, split_per_layer, xavier_bound


INITS = ("xavier_uniform", "normal", "zeros", "patch_embed", "data")
INIT_HELP = ("prompt init: xavier_uniform (VPT), normal (std 0.02), zeros, patch_embed (patch tokens the frozen "
             "backbone's own embedding makes, position included, from noise images), or data (SPT, Wang et al. "
             "2024: each prompted block's prompts are patch tokens sampled at random from the tokens that enter "
             "that block for a batch of the training images; vpt train draws them)")


def _check_init(cfg) -> None:
    if cfg.init in ("patch_embed", "data") and cfg.project_dim:
        raise FieldError("init", f" {cfg.init} copies patch tokens of the backbone's width, and project_dim "
                                 f"{cfg.project_dim} learns prompts in another; drop project_dim or use another init")


@dataclass
class ShallowPromptConfig(Checked):
    needs: ClassVar[str] = "tokens"  # what the backbone must offer: tokens | kv | pixels
    num_tokens: int = option(10, "P prompt tokens inserted after the class/register tokens", range=(0, 4096))
    dropout: float = option(0.0, "dropout on the prompt tokens (VPT used 0.1 on some tasks)", range=(0.0, 1.0))
    project_dim: Optional[int] = option(None, "learn prompts in this dim, project to the width with a Linear "
                                              "(null: the width)", range=(1, 65536))
    init: str = option("xavier_uniform", INIT_HELP, choices=INITS)

    def check(self) -> None:
        _check_init(self)


@dataclass
class DeepPromptConfig(Checked):
    needs: ClassVar[str] = "tokens"
    num_tokens: int = option(10, "P prompt tokens per prompted block", range=(0, 4096))
    layers: Optional[List[int]] = option(None, "prompted block indices (null: every block)", range=(0, 4095))
    last_k: Optional[int] = option(None, "prompt only the last k blocks (instead of layers)", range=(1, 4096))
    dropout: float = option(0.0, "dropout on the prompt tokens", range=(0.0, 1.0))
    project_dim: Optional[int] = option(None, "learn prompts in this dim, project to the width with a Linear "
                                              "(null: the width)", range=(1, 65536))
    init: str = option("xavier_uniform", INIT_HELP, choices=INITS)

    def check(self) -> None:
        _check_init(self)
        if self.layers is not None and self.last_k is not None:
            raise FieldError("last_k", " and layers are both set; set either layers or last_k, not both")


class TokenPrompt(PromptModule):
    uses_tokens = True

    def __init__(self, config, layout, data_config, patch_tokens=None):
        super().__init__(config)
        if layout is None:
            raise ConfigError("token prompts need a ViT-style backbone")
        L, D = layout.depth, layout.embed_dim
        if isinstance(config, ShallowPromptConfig):
            layers = [0]
        else:
            layers = resolve_layers(config.layers, config.last_k, L)
        self.layers = layers
        self._slot = {layer: j for j, layer in enumerate(layers)}
        self.num_tokens = int(config.num_tokens)
        d = config.project_dim or D
        # one (P, d) tensor per prompted block, named by the block index ('prompts.5'), so optimisers that
        # group parameters by layer (timm.optim layer decay) put each block's prompts in that block's group
        self.prompts = nn.ParameterDict({str(layer): nn.Parameter(torch.zeros(self.num_tokens, d)) for layer in layers})
        for p in self.prompts.values():
            if config.init in ("xavier_uniform", "data"):  # data: VPT's init until init_from_tokens replaces it
                b = xavier_bound(layout.patch_size, d)
                nn.init.uniform_(p, -b, b)
            elif config.init == "normal":
                nn.init.normal_(p, std=0.02)
        # init "data": True until init_from_tokens ran (vpt train refuses a run that would start without it)
        self.pending_data_init = config.init == "data" and self.num_tokens > 0
        if config.init == "patch_embed" and self.num_tokens:
            if patch_tokens is None:
                raise ConfigError("prompt init patch_embed needs a backbone that embeds patches (a token backbone)")
            with torch.no_grad():
                sample = patch_tokens(self.num_tokens * len(layers))  # (P * layers, D)
                for j, p in enumerate(self.prompts.values()):
                    p.copy_(sample[j * self.num_tokens:(j + 1) * self.num_tokens])
        if config.project_dim:
            self.proj = nn.Linear(d, D)
            nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_out")
        else:
            self.proj = nn.Identity()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @torch.no_grad()
    def init_from_tokens(self, tokens: Dict[int, torch.Tensor]) -> None:
        """``init: data``: block ``l``'s prompts become ``tokens[l]`` (num_tokens, D), patch tokens that entered
        block ``l`` (see :meth:`vpt.model.PromptedModel.init_prompts_from_images`)."""
        for layer in self.layers:
            t = tokens[layer]
            p = self.prompts[str(layer)]
            if t.shape != p.shape:
                raise ValueError(f"block {layer}: {tuple(t.shape)} tokens for prompts of shape {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))
        self.pending_data_init = False

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
@PROMPTS.register("vpt_deep", DeepPromptConfig, help="VPT-deep: P learnable tokens re-inserted at every (or chosen) block")
def _tokens(config, layout, data_config, patch_tokens=None, **_):
    return TokenPrompt(config, layout, data_config, patch_tokens=patch_tokens)
