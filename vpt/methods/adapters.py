"""Bottleneck adapters: Adapter (Houlsby: after attention and after the MLP; Pfeiffer: after the MLP only)
and AdaptFormer (a scaled adapter beside the MLP). Each adapter's up-projection starts at zero: the model
starts as the backbone's exact output."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from torch import nn

from ..config import Checked, option
from ..registry import METHODS
from .base import MethodModule, blocks_of, require
from .wrappers import Bottleneck, Parallel, Sequential


@dataclass
class AdapterConfig(Checked):
    placement: str = option("houlsby", "houlsby: after attention and after the MLP; pfeiffer: after the MLP only",
                            choices=("houlsby", "pfeiffer"))
    bottleneck: int = option(8, "hidden width of each adapter", range=(1, 65536))
    scale: float = option(1.0, "adapter output scale", range=(0.0, None))
    dropout: float = option(0.0, "dropout inside the adapter", range=(0.0, 1.0, "[)"))


def _wrap(parent: nn.Module, name: str, wrapper: nn.Module) -> nn.Module:
    setattr(parent, name, wrapper)
    return wrapper


@METHODS.register("adapter", AdapterConfig, help="bottleneck adapters after attention and MLP (Houlsby) or after "
                                                  "the MLP only (Pfeiffer); zero start")
class Adapter(MethodModule):
    def attach(self) -> None:
        c, bb = self.config, self.backbone
        blocks = blocks_of(bb, self.kind)
        dim = bb.layout.embed_dim
        self._wrappers: List[nn.Module] = []
        paths = (("attn.proj", "mlp") if c.placement == "houlsby" else ("mlp",))
        for blk in blocks:
            for path in paths:
                parent, name, mod = require(blk, (path,), self.kind, "attention output projection" if "attn" in path
                                            else "MLP", bb)
                self._wrappers.append(_wrap(parent, name, Sequential(mod, Bottleneck(dim, c.bottleneck,
                                                                                     dropout=c.dropout), c.scale)))

    def modules(self) -> List[nn.Module]:
        return [w.adapter for w in self._wrappers]


@dataclass
class AdaptFormerConfig(Checked):
    bottleneck: int = option(64, "hidden width of each adapter", range=(1, 65536))
    scale: float = option(0.1, "s: the adapter branch is added as s * adapter(x)", range=(0.0, None))
    dropout: float = option(0.0, "dropout inside the adapter", range=(0.0, 1.0, "[)"))


@METHODS.register("adaptformer", AdaptFormerConfig, help="AdaptFormer: a scaled bottleneck adapter beside each "
                                                          "MLP; zero start")
class AdaptFormer(MethodModule):
    def attach(self) -> None:
        c, bb = self.config, self.backbone
        blocks = blocks_of(bb, self.kind)
        dim = bb.layout.embed_dim
        self._wrappers = []
        for blk in blocks:
            parent, name, mod = require(blk, ("mlp",), self.kind, "MLP", bb)
            self._wrappers.append(_wrap(parent, name, Parallel(mod, Bottleneck(dim, c.bottleneck, dropout=c.dropout),
                                                               c.scale)))

    def modules(self) -> List[nn.Module]:
        return [w.adapter for w in self._wrappers]
