"""Pixel prompts (Bahng et al. 2022): a learnable border or patch added to the normalised image.

They touch only the input, so they work on any backbone, CNNs included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
from torch import nn

from ..config import Checked, ConfigError, FieldError, option
from ..registry import PROMPTS
from ..backbones.base import fx_tracing
from .base import PromptModule


def _init_(t: torch.Tensor, std: float) -> None:
    if std > 0:
        nn.init.normal_(t, std=std)


def _stretch(t: torch.Tensor, size) -> torch.Tensor:
    """A (1, C, h, w) strip resized to ``size`` (bilinear); itself when the size already matches."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return nn.functional.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


def _check_pair(name: str, value: Optional[List[int]]) -> None:
    if value is not None and len(value) != 2:
        raise FieldError(name, f" must be two numbers [H, W], got {list(value)}")


@dataclass
class PadPromptConfig(Checked):
    needs: ClassVar[str] = "pixels"
    width: int = option(30, "border width p in pixels (Bahng et al.: 30 at 224 px)", range=(1, 8192))
    image_size: Optional[List[int]] = option(None, "[H, W] of the prompt (null: the backbone's input size)",
                                             range=(1, 8192))
    init_std: float = option(1.0, "normal init std in normalised pixel units (paper: randn); 0: zeros",
                             range=(0.0, 1e6))

    def check(self) -> None:
        _check_pair("image_size", self.image_size)


class PadPrompt(PromptModule):
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

    def prompt(self, size=None) -> torch.Tensor:
        """The border image (1, C, H, W) at the built size, or at ``size``: other input sizes (detection resizes
        images freely) keep the border ``width`` pixels wide and stretch its strips along the sides."""
        H, W = self.size if size is None else tuple(size)
        p = self.width
        if not 0 < 2 * p < min(H, W):
            raise ValueError(f"a {p}px pixel_pad border leaves no centre in {H}x{W} images; use larger inputs "
                             f"or a smaller prompt.width")
        if size is None or (H, W) == self.size:
            up, down, left, right = self.pad_up, self.pad_down, self.pad_left, self.pad_right
        else:
            up, down = _stretch(self.pad_up, (p, W)), _stretch(self.pad_down, (p, W))
            left, right = _stretch(self.pad_left, (H - 2 * p, p)), _stretch(self.pad_right, (H - 2 * p, p))
        centre = up.new_zeros(1, 3, H - 2 * p, W - 2 * p)
        mid = torch.cat([left, centre, right], dim=3)  # (1, C, H-2p, W)
        return torch.cat([up, mid, down], dim=2)  # (1, C, H, W)

    def delta(self, size=None) -> torch.Tensor:
        """The additive prompt image (1, C, H, W)."""
        return self.prompt(size)

    def pixels(self, x):
        return x + self.prompt(None if fx_tracing() else x.shape[-2:]).to(x.dtype)


@dataclass
class PatchPromptConfig(Checked):
    needs: ClassVar[str] = "pixels"
    size: int = option(30, "side of the square patch in pixels", range=(1, 8192))
    position: str = option("fixed", "fixed (at loc) or random (a new place each training step; loc in eval)",
                           choices=("fixed", "random"))
    loc: List[int] = option((0, 0), "[row, col] of the patch's top-left corner when fixed / in eval",
                            range=(0, 8192))
    image_size: Optional[List[int]] = option(None, "[H, W] of the prompt (null: the backbone's input size)",
                                             range=(1, 8192))
    init_std: float = option(1.0, "normal init std in normalised pixel units; 0: zeros", range=(0.0, 1e6))

    def check(self) -> None:
        _check_pair("image_size", self.image_size)
        _check_pair("loc", self.loc)


class PatchPrompt(PromptModule):
    uses_pixels = True

    def __init__(self, config, layout, data_config, **_):
        super().__init__(config)
        H, W = tuple(config.image_size or data_config.input_size[1:])
        s = int(config.size)
        r, c = (int(v) for v in config.loc)
        if not (0 < s <= min(H, W) and 0 <= r <= H - s and 0 <= c <= W - s):
            raise ConfigError(f"a {s}px patch at {(r, c)} does not fit {H}x{W} images")
        self.size, self.patch_size, self.loc = (H, W), s, (r, c)
        self.patch = nn.Parameter(torch.zeros(1, 3, s, s))  # (1, C, s, s)
        _init_(self.patch, config.init_std)

    def delta(self, size=None) -> torch.Tensor:
        """The additive prompt image (1, C, H, W): at a random place while training (position: random),
        else at ``loc``. At another input ``size`` the patch keeps its pixels and its place relative to the image."""
        (H0, W0), s = self.size, self.patch_size
        H, W = self.size if size is None else tuple(size)
        if s > min(H, W):
            raise ValueError(f"a {s}px pixel_patch does not fit {H}x{W} images; use larger inputs or a smaller prompt.size")
        if self.training and self.config.position == "random":
            r = int(torch.randint(0, H - s + 1, ()).item())
            c = int(torch.randint(0, W - s + 1, ()).item())
        else:
            r, c = self.loc
            if (H, W) != (H0, W0):  # same relative place
                r = round(r * (H - s) / max(H0 - s, 1))
                c = round(c * (W - s) / max(W0 - s, 1))
        return nn.functional.pad(self.patch, (c, W - s - c, r, H - s - r))  # (1, C, H, W)

    def pixels(self, x):
        return x + self.delta(None if fx_tracing() else x.shape[-2:]).to(x.dtype)


PROMPTS.register("pixel_pad", PadPromptConfig, help="pixel prompt: learnable border of width p (any backbone)")(PadPrompt)
PROMPTS.register("pixel_patch", PatchPromptConfig, help="pixel prompt: learnable square patch, fixed or random place")(
    PatchPrompt)
