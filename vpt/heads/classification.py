"""Light classification heads over pooled backbone features."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..config import Checked, ConfigError, FieldError, option
from ..registry import HEADS, did_you_mean

POOLS = ("backbone", "cls", "avg", "none")


@dataclass
class HeadConfig(Checked):
    kind: str = option("linear", "a registered head kind (vpt list)")
    pool: str = option("backbone", "backbone (the library's own pooling) | cls | avg (mean of image tokens) | "
                                   "none (every image token, or a CNN's feature map, as timm's global_pool=''; "
                                   "the head acts per token)", choices=POOLS)
    hidden_dim: Optional[int] = option(None, "mlp: hidden width (null: the feature width)", range=(1, 65536))
    num_layers: int = option(2, "mlp: number of Linear layers", range=(1, 64))
    dropout: float = option(0.0, "dropout before each Linear", range=(0.0, 1.0))
    init: str = option("small", "linear: weight init; small (trunc normal std 0.01, zero bias: timm's heads) | vpt "
                                "(KMnP/vpt's head: kaiming normal over fan_out, std sqrt(2 / classes), every bias "
                                "-log(99))", choices=("small", "vpt"))

    def check(self) -> None:
        if self.kind not in HEADS:
            names = HEADS.names()
            raise FieldError("kind", f": unknown head kind {self.kind!r}; available: {', '.join(names)}"
                                     f"{did_you_mean(self.kind, names)}")


class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, config: HeadConfig):
        super().__init__()
        self.drop = nn.Dropout(config.dropout)
        self.fc = nn.Linear(in_features, num_classes)
        if config.init == "vpt":  # KMnP/vpt's MLP head with no hidden layer (src/models/mlp.py, special_bias)
            nn.init.kaiming_normal_(self.fc.weight, a=0, mode="fan_out")
            nn.init.constant_(self.fc.bias, -math.log((1 - 0.01) / 0.01))
        else:  # small init, as timm's heads do
            nn.init.trunc_normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(self.drop(x))


class MLPHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, config: HeadConfig):
        super().__init__()
        if config.num_layers < 2:
            raise ConfigError("head.num_layers must be >= 2 for an mlp head (use kind: linear for one layer)")
        if config.init != "small":
            raise ConfigError(f"head.init {config.init!r} is for kind: linear; drop it for an mlp head")
        hidden = config.hidden_dim or in_features
        layers, width = [], in_features
        for _ in range(config.num_layers - 1):
            layers += [nn.Dropout(config.dropout), nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers += [nn.Dropout(config.dropout), nn.Linear(width, num_classes)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


HEADS.register("linear", HeadConfig, help="one Linear layer over pooled features")(LinearHead)
HEADS.register("mlp", HeadConfig, help="an MLP (num_layers Linear layers with GELU) over pooled features")(MLPHead)
