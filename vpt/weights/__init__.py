"""Weights that ship inside the vpt package, with provenance cards beside them: the ``vpt:NAME`` backbone
family. It sits above ``vpt.backbones`` (it builds a timm adapter) and registers itself lazily
(``vpt.registry.BACKBONES``), so the backbones never import it."""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Dict, Tuple

from ..backbones import create_timm
from ..backbones.base import BackboneAdapter, BackboneConfig, BackboneError
from ..registry import BACKBONES, did_you_mean

_HERE = os.path.dirname(os.path.abspath(__file__))

# name -> timm architecture, model kwargs, file and card, all inside this folder
SHIPPED: Dict[str, Dict[str, Any]] = {
    "vit_tiny_cifar10": {
        "arch": "vit_tiny_patch16_224",
        "model_kwargs": {
            "img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3, "mlp_ratio": 2,
            "global_pool": "token",
            # its own preprocessing: 32 px as is, mean = std = 0.5 (see the card)
            "pretrained_cfg_overlay": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0},
        },
        "file": "vit_tiny_cifar10.safetensors",
        "card": "vit_tiny_cifar10.md",
        "sha256": "3ac16fda3cdd565fe24775e36e1ff075f6ab6d6330ac1c992f216977cd5228ef",
        "cifar10_test_top1": 80.26,
    },
}


def resolve_shipped(cfg: BackboneConfig) -> Tuple[BackboneConfig, str]:
    """'vpt:NAME' -> the timm config that builds it (with the packaged weights file) and the file's sha256."""
    name = cfg.name.split(":", 1)[1]
    if name not in SHIPPED:
        avail = ", ".join(sorted(SHIPPED)) or "none in this version"
        raise BackboneError(f"unknown shipped backbone 'vpt:{name}'; available: {avail}{did_you_mean(name, SHIPPED)}")
    entry = SHIPPED[name]
    path = os.path.join(_HERE, entry["file"])
    if not os.path.isfile(path):
        raise BackboneError(f"shipped weights {path} are missing from this installation; reinstall vpt")
    if cfg.weights:
        raise BackboneError(f"'{cfg.name}' brings its own weights; drop weights={cfg.weights!r}, or name the "
                            f"architecture instead (timm:{entry['arch']} with model_kwargs from vpt.weights.SHIPPED)")
    weights = path if cfg.pretrained else None
    return replace(cfg, name=f"timm:{entry['arch']}", weights=weights,
                   model_kwargs={**entry["model_kwargs"], **cfg.model_kwargs}), entry["sha256"]


@BACKBONES.register("vpt", help="weights that ship with vpt (see `vpt list`)")
def create_shipped(cfg: BackboneConfig) -> BackboneAdapter:
    resolved, sha256 = resolve_shipped(cfg)
    adapter = create_timm(resolved)
    # the artifact names the shipped weights ('vpt:NAME' + their hash), not a path inside this install
    adapter.config = cfg
    adapter._weights_id = f"file:{sha256}" if cfg.pretrained else f"random:{cfg.init_seed}"
    return adapter
