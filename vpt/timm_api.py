"""timm's model API on a prompted model, by delegation to the wrapped library model with prompt-aware meaning.

``timm.data.resolve_model_data_config``, ``timm.optim.create_optimizer_v2(layer_decay=...)``, timm's feature
wrappers and training scripts read these. Names are the wrapped model's own, prefixed with where it sits
(``backbone.model.``); prompts join the group of the block they act in (VPT-deep's block-5 prompts decay
with block 5), pixel prompts the stem.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Set, Union

from torch import nn

from .config import ConfigError

_POOLS = {"token": "cls", "cls": "cls", "avg": "avg", "backbone": "backbone", "": "none", "none": "none"}


def _prefixed(pattern: str, prefix: str) -> str:
    """A library regex (matched with re.match at the parameter name's start) moved under ``prefix``."""
    body = pattern[1:] if pattern.startswith("^") else pattern
    return "^" + re.escape(prefix) + "(?:" + body + ")"


class TimmModelApi:
    """Mixed into PromptedModel: needs ``backbone``, ``prompt``, ``head``, ``head_config``, ``data_config``,
    ``num_classes``, ``num_features``, ``set_lean`` / ``lean``."""

    # --- configs ----------------------------------------------------------------------------------
    @property
    def pretrained_cfg(self) -> Dict[str, Any]:
        """The backbone's pretrained config, with the input size the model runs at (what the prompts were
        sized for) and this model's classes: ``timm.data.resolve_model_data_config(model)`` reads it."""
        d, bb = self.data_config, self.backbone
        cfg = dict(bb.pretrained_cfg())
        cfg.update(input_size=tuple(d.input_size), mean=tuple(d.mean), std=tuple(d.std),
                   interpolation=d.interpolation, crop_pct=d.crop_pct, num_classes=self.num_classes)
        pre = "backbone." + bb.library_prefix
        first = cfg.get("first_conv")
        if first:  # module names as this model has them
            cfg["first_conv"] = tuple(pre + c for c in first) if isinstance(first, (tuple, list)) else pre + first
        linears = [n for n, m in self.head.named_modules() if isinstance(m, nn.Linear)] if self.head is not None else []
        cfg["classifier"] = "head." + linears[-1] if linears else None
        return cfg

    @property
    def default_cfg(self) -> Dict[str, Any]:
        return self.pretrained_cfg

    @property
    def feature_info(self) -> List[Dict[str, Any]]:
        """Per-block features (as ``forward_intermediates`` returns them: prompt tokens stripped)."""
        pre = "backbone." + self.backbone.library_prefix
        return [dict(fi, module=pre + fi["module"]) for fi in self.backbone.feature_info()]

    @property
    def head_hidden_size(self) -> int:
        return self.num_features

    # --- the classifier ---------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head if self.head is not None else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head for ``num_classes`` (0: none, pooled features out). ``global_pool``: 'token' (class
        token), 'avg' (image tokens, never prompts), 'backbone' (the library's own pooling), '' (none, as timm:
        ``model(x)`` gives the unpooled image tokens (B, k+N, D) without prompts, or a CNN's map; a head then
        acts per token), None: keep."""
        cfg = self.head_config
        if global_pool is not None:
            pool = _POOLS.get(global_pool)
            if pool is None:
                raise ConfigError(f"global_pool {global_pool!r} is not available on a prompted model; use 'token', "
                                  f"'avg', 'backbone', '' (no pooling), or None to keep {cfg.pool!r}")
            cfg = dataclasses.replace(cfg, pool=pool)
        self._check_pool(cfg, num_classes)
        from .registry import HEADS
        self.head_config = cfg
        self.num_features = self._pooled_width(cfg)
        self.num_classes = int(num_classes)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            self.class_names = None
        ref = next(iter(self.head.parameters()), None) if self.head is not None else None
        ref = ref if ref is not None else next(self.backbone.parameters())
        self.head = (HEADS.get(cfg.kind).factory(self.num_features, self.num_classes, cfg).to(ref.device)
                     if self.num_classes else None)

    # --- training helpers -------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for recomputation in backward: vpt's lean mode on every block (see ``set_lean``)."""
        self.set_lean(1.0 if enable else 0.0)

    @property
    def grad_checkpointing(self) -> bool:
        return self.lean > 0

    def no_weight_decay(self) -> Set[str]:
        """The library's no-decay tensors, and the prompts (vpt's default, as in VPT)."""
        bb = self.backbone
        names = {"backbone." + bb.library_prefix + n for n in bb.no_weight_decay()}
        if self.prompt is not None:
            names |= {"prompt." + n for n, _ in self.prompt.named_parameters()}
        return names

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """The library's parameter groups (stem, blocks, ...) under ``backbone.``, each prompt tensor in the
        group of the block it acts in (pixel prompts: the stem); the head falls last, as in timm."""
        bb = self.backbone
        pre = "backbone." + bb.library_prefix
        out: Dict[str, Any] = {}
        for name, spec in bb.group_matcher(coarse).items():
            if spec is None:
                out[name] = None
                continue
            specs = [(spec, None)] if isinstance(spec, str) else list(spec)
            out[name] = [(_prefixed(rx, pre), suffix) for rx, suffix in specs]
        if self.prompt is not None:
            blocks = "blocks" if "blocks" in out else None
            for n, layer in self.prompt.parameter_layers().items():
                rx = "^" + re.escape("prompt." + n) + "$"
                if layer < 0 or blocks is None or layer >= (bb.layout.depth if bb.layout else 0):
                    out = out if "stem" in out else {"stem": [], **out}
                    out["stem"] = list(out["stem"] or []) + [(rx, None)]
                else:
                    out[blocks].append((rx, (layer,)))
        return out

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last of ``indices`` (in the wrapped model, as timm does); prompts of
        dropped blocks stay in the artifact but no longer act. ``prune_head``: no head (pooled features out)."""
        from .backbones.base import take_indices
        bb = self.backbone
        if bb.layout is None:
            raise ConfigError(f"prune_intermediate_layers needs a token backbone: {bb.token_refusal}")
        take, max_index = take_indices(bb.layout.depth, indices)
        bb.prune_blocks(max_index + 1, prune_norm)
        if prune_head:
            self.reset_classifier(0)
        return take
