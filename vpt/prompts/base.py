"""The hooks a prompt kind plugs into; prompt kinds never import a backbone library."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..backbones.base import DataConfig, TokenLayout
from ..config import PROMPT_SECTION, ConfigError, to_dict
from ..registry import PROMPTS


class PromptModule(nn.Module):
    """Base class. The model's single block loop calls these hooks; defaults do nothing.

    - ``pixels(x)``: the (normalised) image batch before the backbone;
    - ``tokens(i, batch)``: (B, P, D) prompt tokens to insert (first time) or to replace (after) at
      the input of block ``i``, or None;
    - ``kv(i, batch)``: (B, P, A) key and value prefixes for block ``i``'s attention, or None.
    """

    kind: str = ""
    uses_tokens: bool = False  # inserts tokens into the sequence
    uses_kv: bool = False  # adds key/value prefixes inside attention
    uses_pixels: bool = False  # edits the image

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.kind = getattr(config, "kind", "")  # the registered name (the registry stamps it on the config)

    @property
    def first_layer(self) -> int:
        """The first block whose input depends on a prompt (-1: the image itself). Earlier work runs
        without autograd."""
        return -1

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def tokens(self, i: int, batch_size: int) -> Optional[torch.Tensor]:
        return None

    def kv(self, i: int, batch_size: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return None

    def has_tokens(self, i: int) -> bool:
        """Whether ``tokens(i, ...)`` returns tokens (so block i replaces earlier prompts)."""
        return False

    def token_runs(self, i: int) -> Optional[int]:
        """n when the tokens of block ``i`` come in runs of n samples that share the same tokens (a per-sample
        mix of whole-batch prompts), so the model projects each run's tokens once; None: no such runs."""
        return None

    def token_table(self, i: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(table (T, P, D), index (B,)) when the tokens of block ``i`` are rows of a small table chosen per
        sample (a per-sample mix of T tasks), so the model projects the T rows once and gathers their
        keys/values; None: no such table."""
        return None

    def key_mask(self, i: int, num_prompts: int, seq_len: int) -> Optional[torch.Tensor]:
        """bool (B, P_kv + seq_len) of attendable keys at block ``i``; None: all. Only per-sample prompt
        mixes (vpt.multitask) need one."""
        return None

    def parameter_layers(self) -> Dict[str, int]:
        """The block each trainable tensor belongs to (-1: before the blocks), by parameter name: how
        layer-wise optimiser groups (timm.optim layer decay) place prompts."""
        first = self.first_layer
        return {n: first for n, _ in self.named_parameters()}

    def upgrade_tensors(self, tensors: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
        """Saved tensors under ``prefix`` in an older layout -> this module's names (artifacts stay loadable)."""
        return tensors

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def split_per_layer(tensors: Dict[str, torch.Tensor], key: str, layers: List[int]) -> Dict[str, torch.Tensor]:
    """vpt <= 0.x saved deep prompts stacked as one (L', P, d) tensor ``key``; now one ``key.<block>`` each."""
    stacked = tensors.get(key)
    if stacked is None or stacked.ndim != 3 or stacked.shape[0] != len(layers):
        return tensors
    out = {k: v for k, v in tensors.items() if k != key}
    out.update({f"{key}.{layer}": stacked[j].clone() for j, layer in enumerate(layers)})
    return out


def resolve_layers(layers: Optional[List[int]], last_k: Optional[int], depth: int) -> List[int]:
    """The prompted block indices from ``layers`` or ``last_k`` (neither: every block)."""
    if layers is not None and last_k is not None:
        raise ConfigError("set either prompt.layers or prompt.last_k, not both")
    if last_k is not None:
        if not 1 <= last_k <= depth:
            raise ConfigError(f"prompt.last_k must be in 1..{depth} for this {depth}-block backbone, got {last_k}")
        return list(range(depth - last_k, depth))
    if layers is not None:
        out = sorted(set(int(i) for i in layers))
        if not out or any(not 0 <= i < depth for i in out):
            raise ConfigError(f"prompt.layers {layers} must be non-empty block indices in 0..{depth - 1}")
        return out
    return list(range(depth))


def xavier_bound(patch_size: Tuple[int, int], dim: int) -> float:
    """VPT's init: uniform(-b, b) with the xavier bound over the flattened patch and the prompt dim."""
    return math.sqrt(6.0 / float(3 * patch_size[0] * patch_size[1] + dim))


def prompt_to_dict(config: Any) -> Dict[str, Any]:
    """{'kind': name, **fields} for an artifact or a resolved config."""
    return to_dict(config)


def resolve_prompt_config(prompt: Union[None, str, Mapping[str, Any], Any], strict: bool = True) -> Any:
    """'vpt_deep', {'kind': 'vpt_deep', 'num_tokens': 10}, or a config instance -> config instance (a recipe's
    ``model.prompt`` is one already: ``vpt.config.from_dict`` resolves it when the recipe is loaded)."""
    return PROMPT_SECTION.resolve(prompt, strict=strict, where="prompt")


def build_prompt(prompt: Any, layout: Optional[TokenLayout], data_config: DataConfig,
                 **facts: Any) -> Optional[PromptModule]:
    """Config -> module. ``facts`` are backbone facts a kind may need (e.g. ``kv_dim``)."""
    cfg = resolve_prompt_config(prompt)
    if cfg is None:
        return None
    return PROMPTS.get(cfg.kind).factory(cfg, layout, data_config, **facts)
