"""A frozen CNN (a timm model with ``feature_info``) as a torchvision detection backbone: stage ends through an FPN.

Data through the backbone::

    images (B, 3, H, W), already normalised, resized and batched by the detector's transform
      -> pixel prompt (if any), added where the detector's normalisation put the image
      -> timm forward_intermediates at the feature_info stages whose stride is in ``strides``
         (e.g. EfficientNet-Lite0: (B, 40, H/8, W/8), (B, 112, H/16, W/16), (B, 320, H/32, W/32))
      -> torchvision FeaturePyramidNetwork (1x1 lateral + 3x3 output convs, top-down sum) -> (B, C, H/s, W/s) each
      -> extra levels (LastLevelP6P7 for FCOS / RetinaNet, LastLevelMaxPool for Faster R-CNN)
      -> OrderedDict {'0': finest, ..., extra names}, with ``out_channels``, as torchvision's detectors expect
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..config import ConfigError
from ..model import PromptedModel

DEFAULT_STRIDES = (8, 16, 32)


class CNNFeaturePyramid(nn.Module):
    """Backbone for ``torchvision.models.detection``: a prompted CNN's stage ends through an FPN."""

    def __init__(self, prompted: PromptedModel, out_channels: int = 256, strides: Optional[List[int]] = None,
                 extra: str = "none"):
        super().__init__()
        bb = prompted.backbone
        info = bb.feature_info()
        have = [int(f["reduction"]) for f in info]
        strides = [int(s) for s in (strides or DEFAULT_STRIDES)]
        if sorted(set(strides)) != strides:
            raise ConfigError(f"detector.pyramid.strides must be distinct and increasing (finest first), got {strides}")
        missing = [s for s in strides if s not in have]
        if not info or missing:
            fit = [s for s in DEFAULT_STRIDES if s in have] or have[-3:]
            raise ConfigError(f"detector.pyramid.strides {strides}: backbone '{bb.config.name}' has feature maps at "
                              f"strides {have or 'none (no feature_info)'}, so {missing or strides} cannot feed the "
                              f"pyramid; set detector.pyramid.strides to strides it has (e.g. {fit}), or use a "
                              f"backbone with those strides")
        self.prompted = prompted
        self.indices = [len(have) - 1 - have[::-1].index(s) for s in strides]  # the last stage at each stride
        self.out_channels = C = int(out_channels)
        channels = [int(info[i]["num_chs"]) for i in self.indices]
        extra_block = {"none": None, "p6p7": LastLevelP6P7(C, C), "pool": LastLevelMaxPool()}[extra]
        self.fpn = FeaturePyramidNetwork(channels, C, extra_blocks=extra_block)
        n_extra = {"none": 0, "p6p7": 2, "pool": 1}[extra]
        self.strides = [float(s) for s in strides] + [float(strides[-1] * 2 ** (i + 1)) for i in range(n_extra)]
        self.level_names = [str(i) for i in range(len(strides))] + {"none": [], "p6p7": ["p6", "p7"],
                                                                     "pool": ["pool"]}[extra]

    @property
    def num_maps(self) -> int:
        """Feature maps per image: what a detector's anchor generator must have sizes for."""
        return len(self.level_names)

    @property
    def size_divisible(self) -> int:
        """Input sides must be multiples of the coarsest backbone stride for the maps to tile the image."""
        return int(max(self.strides[:len(self.indices)]))

    def train(self, mode: bool = True):
        super().train(mode)
        # BatchNorm statistics stay frozen even under full fine-tuning (torchvision's detection backbones use
        # FrozenBatchNorm2d): a few images per batch cannot estimate them
        self.prompted.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.prompted.forward_intermediates(x, indices=self.indices, stop_early=True, output_fmt="NCHW",
                                                   intermediates_only=True)  # [(B, C_i, H/s_i, W/s_i)]
        names = self.level_names[:len(maps)]
        return self.fpn(OrderedDict(zip(names, maps)))
