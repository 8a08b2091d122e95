"""RepAdapter (Luo et al., 2023): a linear adapter (no nonlinearity) after the norm before attention and before
the MLP, x + s * B(A x) with a dense down-projection A (D -> r) and a group-wise up-projection B (r -> D, g
groups); B starts at zero (an exact identity start). Linear, so it folds into the layer that follows it (the
qkv projection, the MLP's first linear): ``model.merge()`` runs at the plain backbone's speed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..config import Checked, ConfigError, FieldError, option
from ..registry import METHODS
from .base import MethodModule, blocks_of, find, require

# the norm in front of each branch, and the layers that read its output (weight name, bias name or None)
NORMS = {"attn": ("norm1", "ln_1"), "mlp": ("norm2", "ln_2")}
FOLLOWERS = {"attn": (("attn.qkv.weight", "attn.qkv.bias"), ("attn.in_proj_weight", "attn.in_proj_bias")),
             "mlp": (("mlp.fc1.weight", "mlp.fc1.bias"), ("mlp.c_fc.weight", "mlp.c_fc.bias"),
                     ("mlp.fc1_g.weight", "mlp.fc1_g.bias"), ("mlp.fc1_x.weight", "mlp.fc1_x.bias"))}


@dataclass
class RepAdapterConfig(Checked):
    placement: str = option("block", "block: before attention and before the MLP (the paper's RepBlock); attn: "
                                     "before attention only (RepAttn)", choices=("block", "attn"))
    bottleneck: int = option(8, "r: hidden width of each adapter (a multiple of groups)", range=(1, 65536))
    groups: int = option(2, "g: groups of the up-projection (the paper's 2)", range=(1, 1024))
    scale: float = option(1.0, "s: the adapter is x + s * B(A x) (the paper tunes it per task: 0.1 .. 10)",
                          range=(0.0, None))
    dropout: float = option(0.1, "dropout between A and B (the reference's 0.1)", range=(0.0, 1.0, "[)"))

    def check(self) -> None:
        if self.bottleneck % self.groups:
            raise FieldError("bottleneck", f" {self.bottleneck} is not a multiple of groups ({self.groups}); "
                                           f"pick a bottleneck divisible by groups")


class GroupLinear(nn.Module):
    """r -> D in g independent blocks (the reference's grouped 1x1 conv): block k maps hidden units
    k r/g .. (k+1) r/g - 1 to outputs k D/g .. (k+1) D/g - 1. Starts at zero."""

    def __init__(self, hidden: int, dim: int, groups: int):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(groups, dim // groups, hidden // groups))  # (g, D/g, r/g)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.unflatten(-1, (self.groups, -1))  # (B, L, g, r/g)
        return torch.einsum("...gi,goi->...go", z, self.weight).flatten(-2) + self.bias  # (B, L, D)

    def dense(self) -> torch.Tensor:
        """The (D, r) block-diagonal weight."""
        return torch.block_diag(*self.weight)


class LinearAdapter(nn.Module):
    """y = base(x); y + s * B(drop(A y)): A dense (D -> r), B group-wise (r -> D in g blocks), B zero at first.
    ``bypass`` while merged (the following layer then holds it)."""

    def __init__(self, base: nn.Module, dim: int, hidden: int, groups: int, scale: float, dropout: float):
        super().__init__()
        self.base, self.scale = base, float(scale)
        self.down = nn.Linear(dim, hidden)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.up = GroupLinear(hidden, dim, groups)
        self.drop = nn.Dropout(dropout)
        self.bypass = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.bypass:
            return y
        return y + self.scale * self.up(self.drop(self.down(y)))

    def affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The adapter as y -> M y + c (eval mode): M (D, D) = I + s B A, c (D,) = s (B a + b)."""
        B = self.up.dense()  # (D, r)
        M = torch.eye(B.shape[0], dtype=B.dtype, device=B.device) + self.scale * B @ self.down.weight
        c = self.scale * (B @ self.down.bias + self.up.bias)
        return M, c


@METHODS.register("repadapter", RepAdapterConfig, help="RepAdapter: a linear group-wise adapter before attention "
                                                        "and the MLP; zero start; mergeable")
class RepAdapter(MethodModule):
    mergeable = True

    def attach(self) -> None:
        c, bb = self.config, self.backbone
        blocks = blocks_of(bb, self.kind)
        D = bb.layout.embed_dim
        if D % c.groups:
            raise ConfigError(f"method 'repadapter': the width {D} of {bb.config.name} is not a multiple of groups "
                              f"({c.groups}); pick groups dividing {D}")
        branches = ("attn", "mlp") if c.placement == "block" else ("attn",)
        self._wrappers: List[Tuple[int, str, LinearAdapter]] = []
        for i, blk in enumerate(blocks):
            for branch in branches:
                parent, name, mod = require(blk, NORMS[branch], self.kind, f"norm before the {branch}", bb)
                w = LinearAdapter(mod, D, c.bottleneck, c.groups, c.scale, c.dropout)
                setattr(parent, name, w)
                self._wrappers.append((i, branch, w))
        prefix = {m: n for n, m in bb.model.named_modules()}
        self._blocks = {i: prefix[blk] for i, blk in enumerate(blocks)}

    def modules(self) -> List[nn.Module]:
        return [w for _, _, w in self._wrappers]

    def merged_weights(self) -> Dict[str, torch.Tensor]:
        params = dict(self.backbone.model.named_parameters())
        blocks = blocks_of(self.backbone, self.kind)
        out: Dict[str, torch.Tensor] = {}
        for i, branch, w in self._wrappers:
            M, c = (t.detach() for t in w.affine())
            targets = [(wn, bn) for wn, bn in FOLLOWERS[branch] if _has(blocks[i], wn)]
            if not targets:
                raise ConfigError(f"RepAdapter before block {i}'s {branch} cannot merge: none of "
                                  f"{', '.join(wn for wn, _ in FOLLOWERS[branch])} follows it in this backbone; "
                                  f"run it unmerged")
            for wn, bn in targets:
                W = params[f"{self._blocks[i]}.{wn}"].detach()
                bias: Optional[torch.Tensor] = params.get(f"{self._blocks[i]}.{bn}") if bn else None
                if bias is None or not _has(blocks[i], bn):
                    raise ConfigError(f"RepAdapter before block {i}'s {branch} cannot merge: {wn.rsplit('.', 1)[0]} "
                                      f"has no bias to fold the adapter's shift into; run it unmerged")
                out[f"{self._blocks[i]}.{wn}"] = W @ M  # W (I + s B A)
                out[f"{self._blocks[i]}.{bn}"] = bias.detach() + W @ c
        return out


def _has(block: nn.Module, name: str) -> bool:
    """Whether ``name`` ('attn.qkv.bias') is a parameter of ``block``."""
    *path, leaf = name.split(".")
    found = find(block, (".".join(path),)) if path else (None, "", block)
    return found is not None and isinstance(getattr(found[2], leaf, None), nn.Parameter)
