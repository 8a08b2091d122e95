"""FacT-TK (Jie & Deng, 2023): the weight increments of every block's linear layers (qkv, proj, fc1, fc2)
as one tensor of D x D slices, factorised Tucker-style: shared U (r x D) and V (D x r), a core C (r x r x r)
and a per-slice factor P (r x slices), so slice k's increment is s * V (C P_k)^T U. V starts at zero (an
exact identity start); linear in the weights, so it folds into them (``model.merge()``).

A layer of width a multiple of D (qkv: 3 D outputs; fc1 / fc2: mlp_ratio D) is that many slices; layers
whose weights the library reads instead of calling them (Eva's fused qkv, torch's MultiheadAttention) are
left out, as in SSF."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from ..config import Checked, ConfigError, option
from ..registry import METHODS
from .base import MethodModule, blocks_of


@dataclass
class FacTConfig(Checked):
    rank: int = option(8, "r: the rank of the shared factors and the core", range=(1, 1024))
    scale: float = option(1.0, "s: the increment's scale (FacT's paper tunes it per task: 0.01 .. 100)",
                          range=(0.0, None))
    dropout: float = option(0.1, "dropout on U x (the paper's 0.1)", range=(0.0, 1.0, "[)"))


class Factors(nn.Module):
    """What every FacT layer shares: U, V, the core C and the slice factor P."""

    def __init__(self, dim: int, rank: int, slices: int, dropout: float):
        super().__init__()
        self.u = nn.Linear(dim, rank, bias=False)
        self.v = nn.Linear(rank, dim, bias=False)
        self.core = nn.Parameter(torch.empty(rank, rank, rank))
        self.p = nn.Parameter(torch.empty(rank, slices))
        nn.init.xavier_uniform_(self.core)
        nn.init.xavier_uniform_(self.p)
        nn.init.zeros_(self.v.weight)
        self.drop = nn.Dropout(dropout)

    def slice_core(self, k: int) -> torch.Tensor:
        return self.core @ self.p[:, k]  # (r, r)

    def delta(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.v(self.drop(self.u(x)) @ self.slice_core(k))

    def delta_weight(self, k: int) -> torch.Tensor:
        """Slice k's increment as a (D, D) weight: y = x W^T  =>  W = V C_k^T U."""
        return self.v.weight @ self.slice_core(k).T @ self.u.weight


class FacTLinear(nn.Module):
    """base(x) + s * the FacT increment of its slices (output chunks, or input chunks summed)."""

    def __init__(self, base: nn.Linear, factors: Factors, first: int, dim: int, scale: float):
        super().__init__()
        self.base, self.scale, self.first, self.dim = base, float(scale), first, dim
        self.__dict__["factors"] = factors  # shared: registered once, on the method's holder
        self.out_chunks, self.in_chunks = base.out_features // dim, base.in_features // dim
        self.bypass = False

    @property
    def slices(self) -> int:
        return self.out_chunks * self.in_chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.bypass:
            return y
        f, D = self.factors, self.dim
        if self.in_chunks == 1:
            d = torch.cat([f.delta(x, self.first + j) for j in range(self.out_chunks)], dim=-1)
        else:
            d = sum(f.delta(x[..., j * D:(j + 1) * D], self.first + j) for j in range(self.in_chunks))
        return y + self.scale * d

    def delta_weight(self) -> torch.Tensor:
        f = self.factors
        if self.in_chunks == 1:
            return self.scale * torch.cat([f.delta_weight(self.first + j) for j in range(self.out_chunks)], dim=0)
        return self.scale * torch.cat([f.delta_weight(self.first + j) for j in range(self.in_chunks)], dim=1)


@METHODS.register("fact", FacTConfig, help="FacT-TK: Tucker-factorised weight increments shared across blocks; "
                                           "zero start; mergeable")
class FacT(MethodModule):
    mergeable = True

    def attach(self) -> None:
        c, bb = self.config, self.backbone
        blocks = blocks_of(bb, self.kind)
        D = bb.layout.embed_dim
        targets = []
        for blk in blocks:
            owners = dict(blk.named_modules())
            for name, mod in blk.named_modules():
                parent = owners[name.rsplit(".", 1)[0]] if "." in name else blk
                read = isinstance(parent, nn.MultiheadAttention) or (name.endswith("qkv") and hasattr(parent, "q_bias"))
                if type(mod) is nn.Linear and not read and mod.in_features % D == 0 and mod.out_features % D == 0 \
                        and (mod.in_features == D or mod.out_features == D):
                    targets.append((parent, name.rsplit(".", 1)[-1], mod))
        if not targets:
            raise ConfigError(f"method 'fact' found no linear layer of width {D} in the blocks of {bb.config.name}; "
                              f"use a timm or open_clip ViT")
        slices = sum((m.out_features // D) * (m.in_features // D) for _, _, m in targets)
        # the shared factors live in the first wrapper (saved once, under its name)
        self.factors = Factors(D, c.rank, slices, c.dropout)
        self._wrappers: List[FacTLinear] = []
        first = 0
        for parent, leaf, mod in targets:
            w = FacTLinear(mod, self.factors, first, D, c.scale)
            first += w.slices
            setattr(parent, leaf, w)
            self._wrappers.append(w)
        self._wrappers[0].add_module("shared", self.factors)
        self._names = {m: n for n, m in bb.model.named_modules() if isinstance(m, FacTLinear)}

    def modules(self) -> List[nn.Module]:
        return [self.factors]

    def set_bypass(self, on: bool) -> None:
        for w in self._wrappers:
            w.bypass = on

    def merged_weights(self) -> Dict[str, torch.Tensor]:
        return {f"{self._names[w]}.base.weight": w.base.weight.detach() + w.delta_weight().detach()
                for w in self._wrappers}
