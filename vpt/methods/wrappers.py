"""Small wrappers that call the original module (peft's pattern): the backbone's own layers keep running."""
from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """down (D -> r) -> act -> up (r -> D); ``up`` starts at zero, so the branch adds nothing at first."""

    def __init__(self, dim: int, hidden: int, act: bool = True, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU() if act else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(x))))


class Sequential(nn.Module):
    """y = base(x); y + scale * adapter(y) (Houlsby / Pfeiffer: an adapter after a sub-layer's output)."""

    def __init__(self, base: nn.Module, adapter: nn.Module, scale: float = 1.0):
        super().__init__()
        self.base, self.adapter, self.scale = base, adapter, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.scale * self.adapter(y)


class Parallel(nn.Module):
    """base(x) + scale * adapter(x) (AdaptFormer: an adapter beside the MLP)."""

    def __init__(self, base: nn.Module, adapter: nn.Module, scale: float = 1.0):
        super().__init__()
        self.base, self.adapter, self.scale = base, adapter, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.adapter(x)


class ScaleShift(nn.Module):
    """SSF: base(x) * gamma + beta over the last (channel) dimension; ``bypass`` while merged."""

    def __init__(self, base: nn.Module, dim: int, init_std: float = 0.0):
        super().__init__()
        self.base = base
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        if init_std:
            nn.init.normal_(self.gamma, 1.0, init_std)
            nn.init.normal_(self.beta, 0.0, init_std)
        self.bypass = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y if self.bypass else y * self.gamma + self.beta
