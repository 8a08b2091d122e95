"""Pixel prompts (Bahng et al. 2022): a learnable border or patch added to the normalised image.

They touch only the input, so they work on any backbone, CNNs included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
from torch import nn

from ..config import ConfigError
from ..registry import PROMPTS
from .base import PromptModule


def _init_(t: torch.Tensor, std: float) -> None:
    if std > 0:
        nn.init.normal_(t, std=std)


def _check_size(x: torch.Tensor, size, kind: str) -> None:
    if tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"{kind} prompt was built for {tuple(size)} px images, got {tuple(x.shape[-2:])}; "
                         f"resize inputs with the model's preprocessing (or set prompt.image_size)")


@dataclass
class PadPromptConfig:
    kind: ClassVar[str] = "pixel_pad"
    needs: ClassVar[str] = "pixels"
    width: int = 30  # border width p in pixels (Bahng et al.: 30 at 224 px)
    image_size: Optional[List[int]] = None  # (H, W); None = the backbone's input size
    init_std: float = 1.0  # normal init std in normalised pixel units (paper: randn); 0 = zeros


class PadPrompt(PromptModule):
    kind = "pixel_pad"
    uses_pixels = True

    def __init__(self, config, layout, data_config, **_):
        super().__init__(config)
        H, W = tuple(config.image_size or data_config.input_size[1:])
        p = int(config.width)
        if not 0 < 2 * p < min(H, W):
            raise ConfigError(f"prompt.width {p} must be > 0 and leave an unprompted centre in {H}x{W} images")
        self.size, self.width = (H, W), p
        self.pad_up = nn.Parameter(torch.zeros(1, 3, p, W))  # (1, C, p, W)
        self.pad_down = nn.Parameter(torch.zeros(1, 3, p, W))
        self.pad_left = nn.Parameter(torch.zeros(1, 3, H - 2 * p, p))  # (1, C, H-2p, p)
        self.pad_right = nn.Parameter(torch.zeros(1, 3, H - 2 * p, p))
        for t in (self.pad_up, self.pad_down, self.pad_left, self.pad_right):
            _init_(t, config.init_std)

    def prompt(self) -> torch.Tensor:
        H, W, p = *self.size, self.width
        centre = self.pad_up.new_zeros(1, 3, H - 2 * p, W - 2 * p)
        mid = torch.cat([self.pad_left, centre, self.pad_right], dim=3)  # (1, C, H-2p, W)
        return torch.cat([self.pad_up, mid, self.pad_down], dim=2)  # (1, C, H, W)

    def delta(self) -> torch.Tensor:
        """The additive prompt image (1, C, H, W)."""
        return self.prompt()

    def pixels(self, x):
        _check_size(x, self.size, self.kind)
        return x + self.prompt().to(x.dtype)


@dataclass
class PatchPromptConfig:
    kind: ClassVar[str] = "pixel_patch"
    needs: ClassVar[str] = "pixels"
    size: int = 30  # side of the square patch in pixels
    position: str = "fixed"  # fixed (at `loc`) | random (a new place each training step; `loc` in eval)
    loc: List[int] = (0, 0)  # (row, col) of the patch's top-left corner when fixed / in eval
    image_size: Optional[List[int]] = None
    init_std: float = 1.0


class PatchPrompt(PromptModule):
    kind = "pixel_patch"
    uses_pixels = True

    def __init__(self, config, layout, data_config, **_):
        super().__init__(config)
        H, W = tuple(config.image_size or data_config.input_size[1:])
        s = int(config.size)
        if config.position not in ("fixed", "random"):
            raise ConfigError(f"unknown prompt.position '{config.position}'; available: fixed, random")
        r, c = (int(v) for v in config.loc)
        if not (0 < s <= min(H, W) and 0 <= r <= H - s and 0 <= c <= W - s):
            raise ConfigError(f"a {s}px patch at {(r, c)} does not fit {H}x{W} images")
        self.size, self.patch_size, self.loc = (H, W), s, (r, c)
        self.patch = nn.Parameter(torch.zeros(1, 3, s, s))  # (1, C, s, s)
        _init_(self.patch, config.init_std)

    def delta(self) -> torch.Tensor:
        """The additive prompt image (1, C, H, W): at a random place while training (position: random),
        else at ``loc``."""
        (H, W), s = self.size, self.patch_size
        if self.training and self.config.position == "random":
            r = int(torch.randint(0, H - s + 1, ()).item())
            c = int(torch.randint(0, W - s + 1, ()).item())
        else:
            r, c = self.loc
        return nn.functional.pad(self.patch, (c, W - s - c, r, H - s - r))  # (1, C, H, W)

    def pixels(self, x):
        _check_size(x, self.size, self.kind)
        return x + self.delta().to(x.dtype)


@PROMPTS.register("pixel_pad", PadPromptConfig, help="pixel prompt: learnable border of width p (any backbone)")
def _pad(config, layout, data_config, **_):
    return PadPrompt(config, layout, data_config)


@PROMPTS.register("pixel_patch", PatchPromptConfig, help="pixel prompt: learnable square patch, fixed or random place")
def _patch(config, layout, data_config, **_):
    return PatchPrompt(config, layout, data_config)
