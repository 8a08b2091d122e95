"""timm ``VisionTransformer`` family (ViT, DeiT incl. distilled, DINOv2, SigLIP, CLIP-in-timm, ...).

Holds the unmodified timm model and composes its own stages. The private ``_pos_embed`` is used only
here, guarded by the zero-prompt identity test and the timm range in pyproject.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import BackboneAdapter, DataConfig, EmbedContext, TokenLayout, mask_bias


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


def attention_with_prefix(attn: nn.Module, x: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                          bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """timm ``Attention`` on tokens x (B, N, C) with learned key/value prefixes pk, pv (B, P, A).

    Uses the module's own projections and norms; only the (P) prefix keys/values are concatenated to
    the keys/values of the sequence, so no extra token goes through the MLP.
    """
    B, N, _ = x.shape
    H, Dh = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
    q, k, v = qkv.unbind(0)
    P = pk.shape[1]
    pk = pk.reshape(B, P, H, Dh).transpose(1, 2)  # (B, H, P, Dh)
    pv = pv.reshape(B, P, H, Dh).transpose(1, 2)
    q = attn.q_norm(q)
    k = attn.k_norm(torch.cat([pk.to(k.dtype), k], dim=2))  # (B, H, P+N, Dh)
    v = torch.cat([pv.to(v.dtype), v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(B, N, attn.attn_dim)  # (B, N, A)
    out = attn.norm(out)
    return attn.proj_drop(attn.proj(out))


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
        grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(m.patch_embed.dynamic_feat_size((H, W)))
        h = m._pos_embed(x)  # (B, k+N, D): prefix tokens, then patches
        h = m.patch_drop(h)
        h = m.norm_pre(h)
        return h, EmbedContext(grid=grid, num_tokens=h.shape[1])

    def block(self, i, h, ctx, kv=None, key_mask=None):
        blk = self.model.blocks[i]
        bias = mask_bias(key_mask, h.dtype)
        if kv is None:
            return blk(h) if bias is None else blk(h, attn_mask=bias)
        a = attention_with_prefix(blk.attn, blk.norm1(h), kv[0], kv[1], bias)
        h = h + blk.drop_path1(blk.ls1(a))
        return h + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(h))))

    def kv_dim(self) -> int:
        attn = getattr(self.model.blocks[0], "attn", None)
        return int(getattr(attn, "attn_dim", self.layout.embed_dim))

    def finish(self, h):
        return self.model.norm(h)

    def pool(self, feats):
        return self.model.forward_head(feats, pre_logits=True)
