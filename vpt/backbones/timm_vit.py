"""timm ``VisionTransformer`` family (ViT, DeiT incl. distilled, DINOv2, SigLIP, CLIP-in-timm, ...).

Holds the unmodified timm model and composes its own stages. The private ``_pos_embed`` is used only
here, guarded by the zero-prompt identity test and the timm range in pyproject.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import (BackboneAdapter, BackboneError, DataConfig, EmbedContext, TokenLayout, mask_bias, merge_bias,
                   residual_branch)


def _to_2tuple(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def timm_data_config(model: nn.Module) -> DataConfig:
    """timm's own data config; the input size follows the model as built (img_size=...), not the
    pretrained default it was registered with."""
    import timm.data
    cfg = timm.data.resolve_data_config({}, model=model)
    input_size = tuple(cfg["input_size"])
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        input_size = (input_size[0], *_to_2tuple(img_size))
    return DataConfig(
        input_size=input_size,
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def timm_pretrained_cfg(adapter) -> Dict[str, Any]:
    """timm's pretrained_cfg of the wrapped model with the input size it was built for."""
    cfg = dict(getattr(adapter.model, "pretrained_cfg", None) or {})
    cfg["input_size"] = tuple(adapter.data_config().input_size)
    return cfg


def timm_size_refusal(adapter) -> Optional[str]:
    if getattr(adapter.model, "dynamic_img_size", False):
        return None
    size = _to_2tuple(getattr(adapter.model.patch_embed, "img_size", None) or adapter.data_config().input_size[1:])
    return (f"it was built for {size[0]}x{size[1]} px inputs only; build it with model_kwargs "
            f"{{dynamic_img_size: true}} so position embeddings are resampled to each input size")


def prune_timm_blocks(adapter, keep: int, prune_norm: bool) -> None:
    m = adapter.model
    m.blocks = m.blocks[:keep]
    if prune_norm:
        m.norm = nn.Identity()
    adapter.layout = dataclasses.replace(adapter.layout, depth=len(m.blocks))


def timm_layout(m: nn.Module) -> TokenLayout:
    """The token layout of a timm ViT-style model (VisionTransformer, Eva)."""
    return TokenLayout(
        num_prefix=int(m.num_prefix_tokens),
        embed_dim=int(m.embed_dim),
        depth=len(m.blocks),
        grid=_to_2tuple(m.patch_embed.grid_size),
        patch_size=_to_2tuple(m.patch_embed.patch_size),
        has_class_token=m.cls_token is not None,
    )


def _split_qkv_linear(attn: nn.Module) -> bool:
    """True when attn.qkv is a plain Linear whose weight rows can be sliced into q and k/v parts
    (a LoRA-wrapped or otherwise replaced qkv is called as a whole)."""
    return type(attn.qkv) is nn.Linear


def key_values(attn: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (B, L, A) of normalised tokens x (B, L, D) by the module's own qkv projection
    (keys before ``k_norm``, which :func:`attention_with_prefix` applies to every key)."""
    A = attn.attn_dim
    if _split_qkv_linear(attn):
        w, b = attn.qkv.weight, attn.qkv.bias
        kv = F.linear(x, w[A:], None if b is None else b[A:])  # (B, L, 2A)
    else:
        kv = attn.qkv(x)[..., A:]
    return kv.split(A, dim=-1)  # one split: its backward writes both gradients into one tensor


def _shared_over_batch(t: torch.Tensor) -> bool:
    """One tensor expanded over the batch (stride 0). Never asked of an FX proxy: symbolic tracing has no
    strides (and can't branch on them), so a traced model takes the general path, which gives the same values."""
    return not isinstance(t, torch.fx.Proxy) and t.stride(0) == 0


def prefixed_kv(kv: torch.Tensor, pk: Optional[torch.Tensor] = None,
                pv: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (B, P+N, A) of a sequence whose keys|values are the halves of kv (B, N, 2A), behind the
    extra keys/values pk, pv (B, P, A) (None: the sequence's own).

    One concatenation of the whole key|value tensor (B, P+N, 2A), of which keys and values are the two halves
    (views SDPA reads with their strides), instead of a strided copy of each half in every block; a prefix
    shared by the whole batch (stride 0 over it) has its halves joined once, before the batch expansion."""
    A = kv.shape[-1] // 2
    if pk is None:
        return kv.split(A, dim=-1)
    if _shared_over_batch(pk) and _shared_over_batch(pv):
        pkv = torch.cat([pk[:1], pv[:1]], dim=-1).to(kv.dtype).expand(kv.shape[0], -1, -1)  # (B, P, 2A)
    else:
        pkv = torch.cat([pk, pv], dim=-1).to(kv.dtype)  # (B, P, 2A)
    return torch.cat([pkv, kv], dim=1).split(A, dim=-1)  # 2 x (B, P+N, A)


def attention_with_prefix(attn: nn.Module, x: torch.Tensor, pk: Optional[torch.Tensor] = None,
                          pv: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                          num_queries: Optional[int] = None) -> torch.Tensor:
    """timm ``Attention`` on tokens x (B, N, C) with extra keys/values pk, pv (B, P, A) in front of the
    sequence's own, and queries from the first ``num_queries`` tokens only (None: all).

    Uses the module's own projections and norms. The extra keys/values are learned prefixes (prefix
    tuning) or prompt tokens projected by :func:`key_values` (VPT-deep prompts whose outputs the next
    block replaces), so no prompt token goes through the MLP.
    """
    B, N, _ = x.shape
    H, Dh, A = attn.num_heads, attn.head_dim, attn.attn_dim
    nq = N if num_queries is None else num_queries
    if _split_qkv_linear(attn):
        # q apart from k/v: SDPA keeps q for backward, and a q that is a view of one qkv tensor would
        # keep all of it alive next to the concatenated keys/values
        w, b = attn.qkv.weight, attn.qkv.bias
        q = F.linear(x[:, :nq], w[:A], None if b is None else b[:A])  # (B, nq, A)
        kv = F.linear(x, w[A:], None if b is None else b[A:])  # (B, N, 2A)
    else:
        q, kv = attn.qkv(x).split([A, 2 * A], dim=-1)
        q = q[:, :nq]
    k, v = prefixed_kv(kv, pk, pv)  # (B, P+N, A) each
    q = q.reshape(B, nq, H, Dh).transpose(1, 2)  # (B, H, nq, Dh)
    k = k.reshape(B, k.shape[1], H, Dh).transpose(1, 2)  # (B, H, P+N, Dh)
    v = v.reshape(B, v.shape[1], H, Dh).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(B, nq, A)  # (B, nq, A)
    out = attn.norm(out)
    return attn.proj_drop(attn.proj(out))


def block_forward(blk: nn.Module, h: torch.Tensor, pk: Optional[torch.Tensor] = None,
                  pv: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                  num_queries: Optional[int] = None, lean: bool = False) -> torch.Tensor:
    """timm's pre-norm ``Block`` with extra keys/values and a query subset (see attention_with_prefix);
    returns (B, num_queries or L, D). ``lean`` recomputes the MLP's hidden activations in backward
    instead of keeping them (the widest tensors of a frozen block)."""
    a = attention_with_prefix(blk.attn, blk.norm1(h), pk, pv, bias, num_queries)
    if num_queries is not None:
        h = h[:, :num_queries]
    h = h + blk.drop_path1(blk.ls1(a))
    return h + blk.drop_path2(residual_branch(_mlp_branch, blk, h, lean))


def _mlp_branch(blk: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return blk.ls2(blk.mlp(blk.norm2(h)))


def _prefix_refusal(model: nn.Module) -> Optional[str]:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block
    for blk in model.blocks:
        if type(blk) is not Block or type(blk.attn) is not Attention or getattr(blk.attn, "gate", None) is not None:
            return (f"key/value prefixes need timm's standard pre-norm Block with Attention, "
                    f"this model has {type(blk).__name__}/{type(getattr(blk, 'attn', None)).__name__}")
    return None


class TimmViTAdapter(BackboneAdapter):
    library = "timm"

    def __init__(self, model, config, arch, tag):
        super().__init__(model, config, arch, tag)
        m = self.model
        self.prefix_refusal = _prefix_refusal(m)
        self.layout = timm_layout(m)
        self.num_features = int(getattr(m, "head_hidden_size", m.num_features))

    def data_config(self) -> DataConfig:
        return timm_data_config(self.model)

    def embed(self, x):
        m = self.model
        H, W = x.shape[-2:]
        x = m.patch_embed(x)  # (B, N, D), or (B, gh, gw, D) with dynamic_img_size
        # NHWC out of patch_embed exactly when dynamic_img_size (a static check: FX traces through it)
        grid = tuple(x.shape[1:3]) if getattr(m, "dynamic_img_size", False) else tuple(
            m.patch_embed.dynamic_feat_size((H, W)))
        h = m._pos_embed(x)  # (B, k+N, D): prefix tokens, then patches
        h = m.patch_drop(h)
        h = m.norm_pre(h)
        return h, EmbedContext(grid=grid, num_tokens=h.shape[1])

    @property
    def supports_fast_blocks(self) -> bool:
        return self.prefix_refusal is None  # timm's standard Block + Attention everywhere

    def block(self, i, h, ctx, kv=None, key_mask=None, num_queries=None, lean=False, attn_mask=None):
        blk = self.model.blocks[i]
        bias = merge_bias(mask_bias(key_mask, h), attn_mask, h, 0 if kv is None else kv[0].shape[1])
        if kv is None and num_queries is None and not lean:
            return blk(h) if bias is None else blk(h, attn_mask=bias)
        if not self.supports_fast_blocks:
            raise BackboneError(self.prefix_refusal)
        pk, pv = kv if kv is not None else (None, None)
        return block_forward(blk, h, pk, pv, bias, num_queries, lean)

    def block_modules(self):
        return self.model.blocks

    def size_refusal(self):
        return timm_size_refusal(self)

    def mask_refusal(self):
        return None  # timm blocks take attn_mask

    def pretrained_cfg(self):
        return timm_pretrained_cfg(self)

    def prune_blocks(self, keep, prune_norm=False):
        prune_timm_blocks(self, keep, prune_norm)

    def token_kv(self, i, t):
        blk = self.model.blocks[i]
        return key_values(blk.attn, blk.norm1(t))

    def pool_reads_prefix_only(self) -> bool:
        m = self.model
        return getattr(m, "global_pool", None) == "token" and getattr(m, "attn_pool", None) is None

    def kv_dim(self) -> int:
        attn = getattr(self.model.blocks[0], "attn", None)
        return int(getattr(attn, "attn_dim", self.layout.embed_dim))

    def finish(self, h):
        return self.model.norm(h)

    def pool(self, feats):
        return self.model.forward_head(feats, pre_logits=True)

    def unpooled(self, feats):
        norm = getattr(self.model, "fc_norm", None)  # timm's forward_head with global_pool '': fc_norm per token
        return feats if norm is None else norm(feats)
