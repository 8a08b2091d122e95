"""A frozen prompted ViT as a torchvision detection backbone: ViTDet's simple feature pyramid.

Data through the backbone::

    images (B, 3, H, W), H and W multiples of the patch size
      -> PromptedModel.forward_intermediates(output_fmt='NCHW', intermediates_only=True)
         block outputs with prompt and prefix tokens stripped: (B, D, H/p, W/p)
      -> per scale s (a power of two): s > 1 transposed convs, s < 1 max-pool, then 1x1 + 3x3 conv
         -> (B, C, s*H/p, s*W/p)                                               (Li et al., ViTDet, 2022)
      -> torchvision's extra levels (LastLevelP6P7 for FCOS / RetinaNet, LastLevelMaxPool for Faster R-CNN)
      -> OrderedDict {'0': finest, ..., extra names}: what torchvision's detectors expect, with ``out_channels``
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch import nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..config import ConfigError
from ..model import PromptedModel, take_indices

EXTRA_LEVELS = ("none", "p6p7", "pool")
# default scales per extra levels: 5 maps with p6p7 (RetinaNet / FCOS: strides 8..128 at patch 16, P3-P7) and
# with pool (Faster R-CNN: P2-P5 + pool), matching torchvision's default anchor generators
DEFAULT_SCALES = {"none": (4.0, 2.0, 1.0, 0.5), "p6p7": (2.0, 1.0, 0.5), "pool": (4.0, 2.0, 1.0, 0.5)}


def _scale_stage(dim: int, scale: float) -> tuple:
    """Layers that take a (B, dim, h, w) map to scale * (h, w); returns (module, output channels)."""
    k = math.log2(scale) if scale > 0 else float("nan")
    if not (k == k and k == int(k)):
        raise ConfigError(f"detector.pyramid.scales: {scale} is not a power of two (e.g. 4, 2, 1, 0.5)")
    k = int(k)
    layers: List[nn.Module] = []
    for i in range(k):  # upsample: ConvTranspose(2, 2) halving the width, LN + GELU between (ViTDet)
        if i:
            layers += [LayerNorm2d(dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, max(dim // 2, 1), kernel_size=2, stride=2))
        dim = max(dim // 2, 1)
    if k < 0:
        layers.append(nn.MaxPool2d(kernel_size=2 ** -k, stride=2 ** -k))
    return nn.Sequential(*layers), dim


class ViTFeaturePyramid(nn.Module):
    """Backbone for ``torchvision.models.detection``: has ``out_channels``, returns an ordered dict of maps."""

    def __init__(self, vit: PromptedModel, out_channels: int = 256, scales: Optional[List[float]] = None,
                 blocks: Optional[List[int]] = None, norm: bool = False, extra: str = "none"):
        super().__init__()
        layout = vit.backbone.layout
        # torchvision's transform resizes images (min_size=800 by default): refuse a fixed-size ViT now,
        # with the fix, rather than at the first forward
        vit.backbone.require("tokens", "any_input_size", who="a detection feature pyramid")
        if extra not in EXTRA_LEVELS:
            raise ConfigError(f"unknown extra pyramid levels {extra!r}; available: {', '.join(EXTRA_LEVELS)}")
        if scales is None:  # as many maps as torchvision's default anchor generators have sizes (5)
            scales = DEFAULT_SCALES[extra]
        scales = [float(s) for s in scales]
        if not scales or sorted(scales, reverse=True) != scales or len(set(scales)) != len(scales):
            raise ConfigError(f"detector.pyramid.scales must be distinct and decreasing (finest first), got {scales}")
        if blocks is None:
            blocks = [layout.depth - 1] * len(scales)
        elif len(blocks) != len(scales):
            raise ConfigError(f"detector.pyramid.blocks has {len(blocks)} entries for {len(scales)} scales; "
                              f"give one block per scale, or null for the last block")
        self.blocks, _ = take_indices(layout.depth, list(blocks))
        self.vit = vit
        self.norm = bool(norm)
        self.patch_size = layout.patch_size
        self.out_channels = int(out_channels)
        D, C = layout.embed_dim, self.out_channels
        self.stages = nn.ModuleList()
        for s in scales:
            up, dim = _scale_stage(D, s)
            self.stages.append(nn.Sequential(
                up,
                nn.Conv2d(dim, C, kernel_size=1, bias=False), LayerNorm2d(C),
                nn.Conv2d(C, C, kernel_size=3, padding=1, bias=False), LayerNorm2d(C)))
        self.extra = {"none": None, "p6p7": LastLevelP6P7(C, C), "pool": LastLevelMaxPool()}[extra]
        strides = [self.patch_size[0] / s for s in scales]
        n_extra = {"none": 0, "p6p7": 2, "pool": 1}[extra]
        self.strides = strides + [strides[-1] * 2 ** (i + 1) for i in range(n_extra)]  # pixels per map cell
        self.level_names = [str(i) for i in range(len(scales))] + {"none": [], "p6p7": ["p6", "p7"],
                                                                    "pool": ["pool"]}[extra]

    @property
    def prompted(self) -> PromptedModel:
        """The prompted backbone (``vpt.detection.PromptedDetector.vit``)."""
        return self.vit

    @property
    def num_maps(self) -> int:
        """Feature maps per image: what a detector's anchor generator must have sizes for."""
        return len(self.level_names)

    @property
    def size_divisible(self) -> int:
        """Input sides must be multiples of this for every level to tile the image exactly."""
        return int(max(max(self.strides), self.patch_size[0], self.patch_size[1]))

    def check_input(self, x: torch.Tensor) -> None:
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        if H % ph or W % pw:
            fix = (math.ceil(H / ph) * ph, math.ceil(W / pw) * pw)
            raise ValueError(f"input {H}x{W} is not a multiple of the patch size {ph}x{pw}; resize or pad it "
                             f"(e.g. to {fix[0]}x{fix[1]}), or pass images through the detector, whose transform "
                             f"pads to a multiple of {self.size_divisible}")

    def vit_maps(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        """Block index -> (B, D, H/p, W/p) maps, prompts stripped (timm's forward_intermediates layout)."""
        self.check_input(x)
        uniq = sorted(set(self.blocks))
        maps = self.vit.forward_intermediates(x, indices=uniq, norm=self.norm, stop_early=True,
                                              output_fmt="NCHW", intermediates_only=True)
        return dict(zip(uniq, maps))

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.vit_maps(x)
        feats = [stage(maps[b]) for stage, b in zip(self.stages, self.blocks)]  # (B, C, s*H/p, s*W/p) each
        names = self.level_names[:len(feats)]
        if self.extra is not None:
            feats, names = self.extra(feats, list(feats), list(names))
        return OrderedDict(zip(names, feats))
