"""Convpass (Jie & Deng, 2022): a convolutional bypass beside the attention and the MLP of each block, on the
branch's normalised input: down-projection (D -> r), QuickGELU, a 3x3 convolution over the patch grid,
QuickGELU, dropout, up-projection (r -> D), added to the branch's output times s. The up-projection starts at
zero: the model starts as the backbone's exact output. Not linear (two QuickGELUs), so it never merges.

The prefix (class / register) tokens and prompt tokens are not on the grid: each goes through the same
convolution as a 1x1 image, as the reference does with the class token (only the kernel's centre tap
reaches it). The bypass reads the norm's output and adds to the branch's output, so two small wrappers work
as one: a tap on the norm (``norm1`` / ``ln_1``) and an adder on the module after attention (``ls1`` /
``ls_1`` / ``drop_path1``); both stay on every block path, including the fast paths that compute attention
from the block's weights."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Checked, ConfigError, option
from ..registry import METHODS
from .base import MethodModule, blocks_of, require

TAPS = {"attn": ("norm1", "ln_1"), "mlp": ("norm2", "ln_2")}
ADDERS = {"attn": ("ls1", "ls_1", "drop_path1"), "mlp": ("ls2", "ls_2", "drop_path2")}


@dataclass
class ConvpassConfig(Checked):
    placement: str = option("block", "block: beside attention and beside the MLP (Convpass); attn: beside "
                                     "attention only (Convpass-attn)", choices=("block", "attn"))
    bottleneck: int = option(8, "r: channels of the bypass (the paper's 8)", range=(1, 65536))
    scale: float = option(0.1, "s: the bypass is added as s * bypass(x) (the paper tunes it per task: 0.01 .. "
                               "100)", range=(0.0, None))
    dropout: float = option(0.1, "dropout before the up-projection (the reference's 0.1)",
                            range=(0.0, 1.0, "[)"))
    xavier_conv: bool = option(False, "xavier-initialise the 3x3 convolution (false: the identity at the "
                                      "centre tap, the reference's default)")


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Bypass(nn.Module):
    """(B, L, D) tokens whose last gh*gw are the patch grid -> (B, L, D). A sequence of at most ``num_prefix``
    tokens holds the prefix tokens alone (the last block's MLP when only they are computed)."""

    def __init__(self, dim: int, hidden: int, grid: Tuple[int, int], num_prefix: int, dropout: float,
                 xavier_conv: bool):
        super().__init__()
        self.grid, self.hidden, self.num_prefix = grid, hidden, num_prefix
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.up = nn.Linear(hidden, dim)
        self.act = QuickGELU()
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        if xavier_conv:
            nn.init.xavier_uniform_(self.conv.weight)
        else:
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[:, :, 1, 1] += torch.eye(hidden)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid
        n, r = gh * gw, self.hidden
        z = self.act(self.down(x))  # (B, L, r)
        centre = self.conv.weight[:, :, 1, 1]  # (r, r): all a 1x1 image sees of the 3x3 kernel
        if not isinstance(x, torch.fx.Proxy) and x.shape[1] <= self.num_prefix:  # prefix tokens only
            z = F.linear(z, centre, self.conv.bias)  # (B, L, r)
        else:
            patches = z[:, -n:].reshape(-1, gh, gw, r).permute(0, 3, 1, 2)  # (B, r, gh, gw)
            patches = self.conv(patches).permute(0, 2, 3, 1).reshape(-1, n, r)  # (B, n, r)
            others = F.linear(z[:, :-n], centre, self.conv.bias)  # (B, L-n, r): prefix / prompt tokens, 1x1 images
            z = torch.cat([others, patches], dim=1)  # (B, L, r)
        return self.up(self.drop(self.act(z)))


class Slot:
    """What a tap hands to its adder within one block call (not a module: it holds no tensor between calls)."""

    def __init__(self):
        self.x: Optional[torch.Tensor] = None


class Tap(nn.Module):
    """norm(x), kept for the adder of the same branch."""

    def __init__(self, base: nn.Module, slot: Slot):
        super().__init__()
        self.base = base
        self.__dict__["slot"] = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        self.slot.x = y
        return y


class Adder(nn.Module):
    """base(a) + s * bypass(the tapped norm output), for the a.shape[1] first tokens (the last block may compute
    only the prefix tokens' outputs)."""

    def __init__(self, base: nn.Module, bypass: Bypass, slot: Slot, scale: float, where: str):
        super().__init__()
        self.base, self.bypass, self.scale, self.where = base, bypass, float(scale), where
        self.__dict__["slot"] = slot

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        x, self.slot.x = self.slot.x, None
        if x is None:
            raise RuntimeError(f"Convpass at {self.where}: the branch ran without its norm; the block calls its "
                               f"modules in an order this method does not know")
        b = self.bypass(x)  # (B, L, D)
        if not isinstance(a, torch.fx.Proxy) and b.shape[1] != a.shape[1]:
            b = b[:, :a.shape[1]]  # (B, nq, D): the last block computed only the first nq tokens
        return self.base(a) + self.scale * b


@METHODS.register("convpass", ConvpassConfig, help="Convpass: a 3x3-conv bypass beside attention and the MLP "
                                                    "over the patch grid; zero start")
class Convpass(MethodModule):
    merge_refusal = "its bypass has QuickGELU nonlinearities around the convolution"

    def attach(self) -> None:
        c, bb = self.config, self.backbone
        blocks = blocks_of(bb, self.kind)
        if getattr(bb.model, "dynamic_img_size", False):
            raise ConfigError(f"method 'convpass' convolves over the fixed patch grid {bb.layout.grid}, and "
                              f"{bb.config.name} takes any input size (dynamic_img_size); build the backbone "
                              f"without dynamic_img_size")
        D, grid = bb.layout.embed_dim, tuple(bb.layout.grid)
        self._bypasses: List[Bypass] = []
        branches = ("attn", "mlp") if c.placement == "block" else ("attn",)
        for i, blk in enumerate(blocks):
            for branch in branches:
                t_parent, t_name, norm = require(blk, TAPS[branch], self.kind, f"norm before the {branch}", bb)
                a_parent, a_name, after = require(blk, ADDERS[branch], self.kind,
                                                  f"module after the {branch} (layer scale or drop path)", bb)
                slot = Slot()
                bypass = Bypass(D, c.bottleneck, grid, bb.layout.num_prefix, c.dropout, c.xavier_conv)
                setattr(t_parent, t_name, Tap(norm, slot))
                setattr(a_parent, a_name, Adder(after, bypass, slot, c.scale, f"block {i} {branch}"))
                self._bypasses.append(bypass)

    def modules(self) -> List[nn.Module]:
        return list(self._bypasses)
