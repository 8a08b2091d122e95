"""BitFit (Ben Zaken et al., 2022) and partial tuning: the backbone's own tensors train, nothing is added.

BitFit trains every bias of the backbone (optionally only the blocks'); its tuned biases are the backbone's,
so ``merge(alpha)`` interpolates them WiSE-style with the frozen ones. Partial tuning trains the last k
blocks (and the final norm)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch

from ..config import Checked, ConfigError, option
from ..registry import METHODS
from .base import MethodModule, blocks_of


@dataclass
class BitFitConfig(Checked):
    blocks_only: bool = option(False, "train the biases inside the transformer blocks only (not the patch "
                                      "embedding or the final norm)")


@METHODS.register("bitfit", BitFitConfig, help="BitFit: train the backbone's biases only; mergeable (WiSE)")
class BitFit(MethodModule):
    mergeable = True

    def attach(self) -> None:
        model = self.backbone.model
        prefix = ""
        if self.config.blocks_only:
            blocks = blocks_of(self.backbone, self.kind)
            prefix = next(n for n, m in model.named_modules() if m is blocks) + "."
        self._names = [n for n, p in model.named_parameters() if n.endswith("bias") and n.startswith(prefix)]
        if not self._names:
            raise ConfigError(f"method 'bitfit': {self.backbone.config.name} has no bias tensors to train")
        params = dict(model.named_parameters())
        self._frozen = {n: params[n].detach().clone() for n in self._names}
        for n in self._names:
            params[n].requires_grad_(True)

    def merged_weights(self) -> Dict[str, torch.Tensor]:
        params = dict(self.backbone.model.named_parameters())
        return {n: params[n].detach().clone() for n in self._names}

    def frozen_weights(self) -> Dict[str, torch.Tensor]:
        return self._frozen


@dataclass
class PartialConfig(Checked):
    last_k: int = option(1, "train the last k blocks", range=(1, 1024))
    norm: bool = option(True, "also train the final norm")


@METHODS.register("partial", PartialConfig, help="partial tuning: train the last k blocks (and the final norm)")
class Partial(MethodModule):
    merge_refusal = "partial tuning trains the backbone's own weights: there is nothing to fold"

    def attach(self) -> None:
        blocks = blocks_of(self.backbone, self.kind)
        k = self.config.last_k
        if k > len(blocks):
            raise ConfigError(f"method 'partial': last_k is {k} but this backbone has {len(blocks)} blocks; use 1.."
                              f"{len(blocks)}")
        for blk in list(blocks)[len(blocks) - k:]:
            blk.requires_grad_(True)
        if self.config.norm:
            for name in ("norm", "fc_norm"):
                m = getattr(self.backbone.model, name, None)
                if isinstance(m, torch.nn.Module):
                    m.requires_grad_(True)

    def modules(self) -> List[torch.nn.Module]:
        return []
