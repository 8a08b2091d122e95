"""What a method is: a config dataclass + a :class:`MethodModule` that wraps backbone submodules."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..config import ConfigError, METHOD_SECTION
from ..registry import METHODS


class MethodModule:
    """Attaches a method to a backbone adapter: wraps submodules (the wrappers hold the method's trainable
    tensors, so they are saved under the backbone's module names) or unfreezes some of the backbone's own
    tensors. Not an nn.Module: everything it trains lives inside the backbone.

    - ``attach()``: wrap / unfreeze (called once, on a frozen backbone);
    - ``modules()``: the wrappers (their tensors take the optimizer role 'adapter');
    - ``mergeable``: whether ``merge(alpha)`` folds the method into the backbone's weights."""

    kind: str = ""
    mergeable: bool = False
    merge_refusal = "its added layers are not linear in the backbone's weights"

    def __init__(self, config: Any, backbone):
        self.config = config
        self.backbone = backbone
        self.kind = getattr(config, "kind", "")
        self._merged: Optional[Dict[str, torch.Tensor]] = None

    def attach(self) -> None:
        raise NotImplementedError

    def modules(self) -> List[nn.Module]:
        return []

    def wrap_prompt(self, prompt: Optional[nn.Module], data_config: Any) -> Optional[nn.Module]:
        """The model's prompt module as this method wants it (E2VPT composes it with key-value prompts and
        refuses kinds it cannot take); most methods leave it as it is."""
        return prompt

    # --- merge: the method folded into the backbone's weights (WiSE: alpha between frozen and tuned) ----
    def merged_weights(self) -> Dict[str, torch.Tensor]:
        """{backbone parameter name: the tuned value with the method folded in}. Mergeable methods only."""
        raise NotImplementedError

    def merge(self, alpha: float = 1.0) -> None:
        if not self.mergeable:
            raise ConfigError(f"method {self.kind!r} cannot merge into the backbone's weights ({self.merge_refusal}); "
                              f"run it unmerged")
        if self._merged is not None:
            raise ConfigError("the method is already merged; call unmerge() first")
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"merge alpha must be in [0, 1] (0: the frozen backbone, 1: the tuned one), got {alpha}")
        params = dict(self.backbone.model.named_parameters())
        with torch.no_grad():
            target = self.merged_weights()
            frozen = self.frozen_weights()
            kept = {n: params[n].detach().clone() for n in target}
            self.set_bypass(True)
            for n, w1 in target.items():
                w0 = frozen.get(n, kept[n])
                params[n].copy_(w0 + alpha * (w1 - w0))
        self._merged = kept

    def frozen_weights(self) -> Dict[str, torch.Tensor]:
        """The weights before tuning, where the method trains the backbone's own tensors (BitFit); else {}."""
        return {}

    def unmerge(self) -> None:
        if self._merged is None:
            raise ConfigError("the method is not merged; nothing to unmerge")
        params = dict(self.backbone.model.named_parameters())
        with torch.no_grad():
            for n, w in self._merged.items():
                params[n].copy_(w)
        self.set_bypass(False)
        self._merged = None

    @property
    def merged(self) -> bool:
        return self._merged is not None

    def set_bypass(self, on: bool) -> None:
        """While merged, wrappers pass through to the (merged) original module."""
        for m in self.modules():
            if hasattr(m, "bypass"):
                m.bypass = on


def blocks_of(backbone, who: str) -> nn.ModuleList:
    blocks = backbone.block_modules() if backbone.supports_tokens else None
    if blocks is None:
        raise ConfigError(f"method {who!r} wraps transformer blocks, and this backbone ({backbone.config.name}) has "
                          f"none; use a ViT backbone (timm or open_clip)")
    return blocks


def find(block: nn.Module, paths: Tuple[str, ...]) -> Optional[Tuple[nn.Module, str, nn.Module]]:
    """The first of ``paths`` ('mlp', 'attn.proj') that exists in ``block`` as (parent, attribute, module)."""
    for path in paths:
        parent, *rest = [block], path.split(".")
        mod = block
        ok = True
        for part in path.split("."):
            parent = mod
            mod = getattr(mod, part, None)
            if not isinstance(mod, nn.Module):
                ok = False
                break
        if ok:
            return parent, path.split(".")[-1], mod
    return None


def require(block: nn.Module, paths: Tuple[str, ...], who: str, what: str, backbone) -> Tuple[nn.Module, str, nn.Module]:
    found = find(block, paths)
    if found is None:
        raise ConfigError(f"method {who!r} needs each block's {what} ({' or '.join(paths)}), which this backbone's "
                          f"blocks ({type(block).__name__}, {backbone.config.name}) do not have; use a timm ViT")
    return found


def build_method(config: Any, backbone) -> Optional[MethodModule]:
    """Config (or kind name / mapping) -> an attached MethodModule, or None."""
    cfg = METHOD_SECTION.resolve(config, where="method")
    if cfg is None:
        return None
    method = METHODS.get(cfg.kind).factory(cfg, backbone)
    method.attach()
    return method
