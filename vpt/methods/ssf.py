"""SSF (Lian et al., 2022): a learned per-channel scale and shift after each linear and norm layer of the
blocks (and the final norm); on timm's Eva, whose attention reads its fused qkv weight instead of calling the
layer, and on torch's MultiheadAttention (open_clip), whose out_proj is read too, after every other one. Linear in the layer's output, so it folds into the layer's weight and bias
(``model.merge()``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from ..config import Checked, ConfigError, option
from ..registry import METHODS
from .base import MethodModule, blocks_of
from .wrappers import ScaleShift


@dataclass
class SSFConfig(Checked):
    init_std: float = option(0.02, "scales start at N(1, std), shifts at N(0, std) (the paper's init); 0: an "
                                   "exact identity start", range=(0.0, 1.0))
    norms: bool = option(True, "also after each LayerNorm (norm1, norm2 and the final norm)")


@METHODS.register("ssf", SSFConfig, help="SSF: per-channel scale and shift after every linear / norm layer; "
                                         "mergeable")
class SSF(MethodModule):
    mergeable = True

    def attach(self) -> None:
        c, bb = self.config, self.backbone
        self._wrappers: Dict[str, ScaleShift] = {}
        kinds = (nn.Linear, nn.LayerNorm) if c.norms else (nn.Linear,)
        targets = []
        for i, blk in enumerate(blocks_of(bb, self.kind)):
            owners = dict(blk.named_modules())
            for name, mod in blk.named_modules():
                parent = owners[name.rsplit(".", 1)[0]] if "." in name else blk
                # layers whose weights are read, never called: timm's Eva attention runs F.linear(x, qkv.weight,
                # q/v biases); torch's MultiheadAttention (open_clip) reads out_proj.weight
                read = isinstance(parent, nn.MultiheadAttention) or (name.endswith("qkv") and hasattr(parent, "q_bias"))
                if name and isinstance(mod, kinds) and not read:
                    targets.append((blk, name))
        final = getattr(bb.model, "norm", None)
        if c.norms and isinstance(final, nn.LayerNorm):
            targets.append((bb.model, "norm"))
        if not targets:
            raise ConfigError(f"method 'ssf' found no nn.Linear / nn.LayerNorm in the blocks of {bb.config.name}; "
                              f"use a timm or open_clip ViT")
        for root, name in targets:
            *path, leaf = name.split(".")
            parent = root
            for part in path:
                parent = getattr(parent, part)
            mod = getattr(parent, leaf)
            dim = mod.out_features if isinstance(mod, nn.Linear) else mod.normalized_shape[-1]
            wrapper = ScaleShift(mod, dim, c.init_std)
            setattr(parent, leaf, wrapper)
        # the wrappers by their name inside the backbone model (what merge writes to)
        self._wrappers = {n: m for n, m in bb.model.named_modules() if isinstance(m, ScaleShift)}

    def modules(self) -> List[nn.Module]:
        return list(self._wrappers.values())

    def merged_weights(self) -> Dict[str, torch.Tensor]:
        out = {}
        for name, w in self._wrappers.items():
            base = w.base
            if getattr(base, "weight", None) is None or getattr(base, "bias", None) is None:
                raise ConfigError(f"SSF at {name} cannot merge: its layer has no weight or bias to fold the "
                                  f"scale / shift into; run it unmerged")
            g, b = w.gamma.detach(), w.beta.detach()
            W = base.weight.detach()
            out[f"{name}.base.weight"] = W * (g[:, None] if W.ndim == 2 else g)
            out[f"{name}.base.bias"] = base.bias.detach() * g + b
        return out
