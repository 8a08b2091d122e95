"""Prefix prompts: learnable keys and values concatenated inside attention only.

No extra token passes through the MLPs or the residual stream, so inference costs less than VPT-deep
with the same P.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
from torch import nn

from ..config import Checked, ConfigError, FieldError, option
from ..registry import PROMPTS
from .base import PromptModule, resolve_layers, split_per_layer, xavier_bound


@dataclass
class PrefixPromptConfig(Checked):
    needs: ClassVar[str] = "kv"
    num_tokens: int = option(10, "P key/value pairs per prompted block", range=(1, 4096))
    layers: Optional[List[int]] = option(None, "prompted block indices (null: every block)", range=(0, 4095))
    last_k: Optional[int] = option(None, "prompt only the last k blocks (instead of layers)", range=(1, 4096))
    project_dim: Optional[int] = option(None, "reparameterise: learn (P, d) and map to keys and values with a "
                                              "Linear (null: learn them directly)", range=(1, 65536))
    dropout: float = option(0.0, "dropout on the keys and values", range=(0.0, 1.0))

    def check(self) -> None:
        if self.layers is not None and self.last_k is not None:
            raise FieldError("last_k", " and layers are both set; set either layers or last_k, not both")


class PrefixPrompt(PromptModule):
    uses_kv = True

    def __init__(self, config, layout, data_config, kv_dim: Optional[int] = None):
        super().__init__(config)
        if layout is None:
            raise ConfigError("prefix prompts need a ViT-style backbone")
        L = layout.depth
        A = kv_dim or layout.embed_dim
        layers = resolve_layers(config.layers, config.last_k, L)
        if config.num_tokens < 1:
            raise ConfigError(f"prompt.num_tokens must be >= 1, got {config.num_tokens}")
        self.layers = layers
        self._slot = {layer: j for j, layer in enumerate(layers)}
        self.num_tokens = 0  # nothing enters the token sequence
        self.num_prefix = int(config.num_tokens)
        self.kv_dim = A
        d = config.project_dim
        width = d or 2 * A  # (P, d) through a Linear, or (P, 2A): keys | values
        b = xavier_bound(layout.patch_size, d or A)
        # one tensor per prompted block, named by the block index (see TokenPrompt)
        self.prefix = nn.ParameterDict({str(layer): nn.Parameter(torch.zeros(self.num_prefix, width)) for layer in layers})
        for p in self.prefix.values():
            nn.init.uniform_(p, -b, b)
        self.proj = nn.Linear(d, 2 * A) if d else nn.Identity()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @property
    def first_layer(self) -> int:
        return self.layers[0]

    def kv(self, i, batch_size):
        if i not in self._slot:
            return None
        kv = self.dropout(self.proj(self.prefix[str(i)]))  # (P, 2A)
        k, v = kv.unsqueeze(0).expand(batch_size, -1, -1).chunk(2, dim=-1)  # 2 x (B, P, A)
        return k, v

    def parameter_layers(self):
        layers = {n: self.layers[0] for n, _ in self.named_parameters()}  # a shared projection: the first block
        layers.update({f"prefix.{layer}": layer for layer in self.layers})
        return layers

    def upgrade_tensors(self, tensors, prefix):
        return split_per_layer(tensors, prefix + "prefix", self.layers)

    def extra_repr(self):
        return f"kind={self.kind!r}, num_prefix={self.num_prefix}, layers={self.layers}"


@PROMPTS.register("vpt_prefix", PrefixPromptConfig, help="prefix prompts: learnable keys/values inside attention only")
def _prefix(config, layout, data_config, kv_dim=None, **_):
    return PrefixPrompt(config, layout, data_config, kv_dim=kv_dim)
