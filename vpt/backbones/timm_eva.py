"""timm ``Eva`` family (EVA-02, DINOv3-style and other RoPE ViTs).

Eva's attention applies RoPE to every token after its ``num_prefix_tokens`` class/register tokens.
Prompt tokens sit right after those, so the RoPE table is extended with identity rotations (sin 0,
cos 1) for the prompt positions: prompts carry no position, like the class token.

Fast blocks (pre-norm ``EvaBlock`` with ``EvaAttention``, or ``AttentionRope`` without grouped keys/values):
the block composed from the library's own projections, norms and MLP, with extra keys/values (VPT-deep
prompts projected by :meth:`TimmEvaAdapter.token_kv`, key/value prefixes) joined to the sequence's in one
contiguous copy (``prefixed_kv``) and queries from the first tokens only. The RoPE table then covers every key
with identity rotations in front (extra keys, prefix and prompt tokens), so one rotation pass rotates the
joined keys where the library rotates a slice and concatenates.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import BackboneAdapter, BackboneError, DataConfig, EmbedContext, mask_bias, merge_bias, residual_branch
from .timm_vit import (prefixed_kv, prune_timm_blocks, timm_data_config, timm_layout, timm_pretrained_cfg,
                       timm_size_refusal)


def pad_rope(rope: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """Prepend identity rotations for ``num_prompts`` tokens along the token axis (-2) of a cat(sin, cos) table."""
    if num_prompts == 0 or rope is None:
        return rope
    shape = list(rope.shape)
    shape[-2] = num_prompts
    half = shape[-1] // 2
    sin = rope.new_zeros(shape[:-1] + [half])
    cos = rope.new_ones(shape[:-1] + [shape[-1] - half])
    return torch.cat([torch.cat([sin, cos], dim=-1), rope], dim=-2)  # (..., P+N, 2d)


# one node of an FX graph (timm's get_graph_node_names, torchvision's create_feature_extractor): the prompt count
# it reads from shapes is known only when the traced graph runs
torch.fx.wrap("pad_rope")


def _attn_dim(attn: nn.Module) -> int:
    return int(attn.num_heads * attn.head_dim)


def _qkv_bias(attn: nn.Module) -> Optional[torch.Tensor]:
    """The fused projection's bias (3A,) as the library adds it: EvaAttention's q/k/v biases (k: a zero buffer)
    or the Linear's own (AttentionRope); None: no bias."""
    if getattr(attn, "q_bias", None) is not None:
        return torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))  # (3A,)
    return getattr(attn.qkv, "bias", None)


def _linear_rows(attn: nn.Module, x: torch.Tensor, rows: slice) -> torch.Tensor:
    """Rows ``rows`` of the fused qkv projection of x (B, L, D), computed as the library does: its weight read
    with the q/k/v biases (EvaAttention with biases), added after the matmul (``qkv_bias_separate``), or a
    plain Linear's rows; a qkv module that is not a plain Linear (LoRA-wrapped) is called whole."""
    bias = _qkv_bias(attn)
    if getattr(attn, "q_bias", None) is None and type(attn.qkv) is not nn.Linear:
        return attn.qkv(x)[..., rows]
    w = attn.qkv.weight[rows]
    b = None if bias is None else bias[rows]
    if b is not None and getattr(attn, "qkv_bias_separate", False):
        return F.linear(x, w) + b
    return F.linear(x, w, b)


def key_values(attn: nn.Module, x: torch.Tensor):
    """Keys and values of normalised tokens x (B, L, D) by the attention's own projections, before ``k_norm``
    and RoPE (which the attention applies to every key): one (B, L, 2A) tensor (fused qkv) whose halves are
    the keys and values, or a pair of (B, L, A) tensors (separate projections)."""
    A = _attn_dim(attn)
    if attn.qkv is not None:
        return _linear_rows(attn, x, slice(A, 3 * A))  # (B, L, 2A)
    return attn.k_proj(x), attn.v_proj(x)  # 2 x (B, L, A)


def join_kv(kv, pk: Optional[torch.Tensor], pv: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (B, P+L, A) of the sequence's ``kv`` (see :func:`key_values`) behind pk, pv (B, P, A)."""
    if not isinstance(kv, tuple):
        return prefixed_kv(kv, pk, pv)  # one contiguous copy of keys|values
    k, v = kv
    if pk is None:
        return k, v
    # separate projections: each join is already a copy of contiguous tensors
    return torch.cat([pk.to(k.dtype), k], dim=1), torch.cat([pv.to(v.dtype), v], dim=1)  # (B, P+L, A) each


def rotate(x: torch.Tensor, rope: Optional[torch.Tensor], skip: int, half: bool) -> torch.Tensor:
    """RoPE on heads x (B, H, L, Dh) after their first ``skip`` tokens (which keep their values), as the
    library's ``apply_rot_embed_cat`` with identity rotations for the skipped rows (exact: x * 1 + r * 0);
    a table that covers none of the L rows leaves x as it is."""
    if rope is None or x.shape[-2] <= skip:
        return x
    from timm.layers import apply_rot_embed_cat
    table = pad_rope(rope, skip)[..., :x.shape[-2], :]  # (..., L, 2Dh)
    return apply_rot_embed_cat(x, table, half=half).type_as(x)


torch.fx.wrap("rotate")  # one node under FX: how many rows it skips is known only when the traced graph runs


def attention_with_prefix(attn: nn.Module, x: torch.Tensor, rope: Optional[torch.Tensor],
                          pk: Optional[torch.Tensor] = None, pv: Optional[torch.Tensor] = None,
                          bias: Optional[torch.Tensor] = None, num_queries: Optional[int] = None,
                          skip: Optional[int] = None) -> torch.Tensor:
    """Eva attention on tokens x (B, L, C) with extra keys/values pk, pv (B, P, A) in front of the sequence's
    own, and queries from the first ``num_queries`` tokens only (None: all); ``rope`` rotates the sequence
    after its first ``skip`` tokens (default: the attention's ``num_prefix_tokens``; prompt tokens in the
    sequence add to it), the extra keys are not rotated. The library's own projections, norms and gate."""
    B, L, _ = x.shape
    H, Dh, A = attn.num_heads, attn.head_dim, _attn_dim(attn)
    nq = L if num_queries is None else num_queries
    skip = attn.num_prefix_tokens if skip is None else skip
    xq = x if num_queries is None else x[:, :nq]
    q = _linear_rows(attn, xq, slice(0, A)) if attn.qkv is not None else attn.q_proj(xq)  # (B, nq, A)
    k, v = join_kv(key_values(attn, x), pk, pv)  # (B, P+L, A) each
    P = k.shape[1] - L
    q = q.reshape(B, nq, H, Dh).transpose(1, 2)  # (B, H, nq, Dh)
    k = k.reshape(B, P + L, H, Dh).transpose(1, 2)  # (B, H, P+L, Dh)
    v = v.reshape(B, P + L, H, Dh).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    half = bool(getattr(attn, "rotate_half", False))
    q, k = rotate(q, rope, skip, half).type_as(v), rotate(k, rope, P + skip, half).type_as(v)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(B, nq, A)  # (B, nq, A)
    out = attn.norm(out)
    if attn.gate is not None:
        out = out * attn.gate(xq).sigmoid()
    return attn.proj_drop(attn.proj(out))


def block_forward(blk: nn.Module, h: torch.Tensor, rope: Optional[torch.Tensor], pk: Optional[torch.Tensor] = None,
                  pv: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                  num_queries: Optional[int] = None, lean: bool = False, skip: Optional[int] = None) -> torch.Tensor:
    """timm's pre-norm ``EvaBlock`` with extra keys/values and a query subset (see attention_with_prefix);
    returns (B, num_queries or L, D). ``lean`` recomputes the MLP's hidden activations in backward."""
    a = attention_with_prefix(blk.attn, blk.norm1(h), rope, pk, pv, bias, num_queries, skip)
    if num_queries is not None:
        h = h[:, :num_queries]
    if blk.gamma_1 is not None:
        a = blk.gamma_1 * a
    h = h + blk.drop_path1(a)
    return h + blk.drop_path2(residual_branch(_mlp_branch, blk, h, lean))


def _mlp_branch(blk: nn.Module, h: torch.Tensor) -> torch.Tensor:
    out = blk.mlp(blk.norm2(h))
    return out if blk.gamma_2 is None else blk.gamma_2 * out


def _fast_refusal(model: nn.Module) -> Optional[str]:
    """None when every block is a pre-norm EvaBlock whose attention the composed block reproduces."""
    from timm.layers import AttentionRope
    from timm.models.eva import EvaAttention, EvaBlock
    for blk in model.blocks:
        attn = getattr(blk, "attn", None)
        if type(blk) is not EvaBlock or type(attn) not in (EvaAttention, AttentionRope):
            return (f"key/value prefixes need timm's pre-norm EvaBlock with EvaAttention or AttentionRope, "
                    f"this model has {type(blk).__name__}/{type(attn).__name__}")
        if getattr(attn, "num_kv_groups", 1) != 1:
            return "key/value prefixes are not implemented for grouped-query attention (num_kv_heads < num_heads)"
    return None


class TimmEvaAdapter(BackboneAdapter):
    library = "timm"

    def __init__(self, model, config, arch, tag):
        super().__init__(model, config, arch, tag)
        m = self.model
        self.prefix_refusal = _fast_refusal(m)
        self.layout = timm_layout(m)
        self.num_features = int(getattr(m, "head_hidden_size", m.num_features))
        self._mixed = bool(getattr(m, "rope_mixed", False))

    def data_config(self) -> DataConfig:
        return timm_data_config(self.model)

    def embed(self, x):
        m = self.model
        H, W = x.shape[-2:]
        x = m.patch_embed(x)
        # NHWC out of patch_embed exactly when dynamic_img_size (a static check: FX traces through it)
        grid = tuple(x.shape[1:3]) if getattr(m, "dynamic_img_size", False) else tuple(
            m.patch_embed.dynamic_feat_size((H, W)))
        h, rope = m._pos_embed(x)  # (B, k+N, D), RoPE table for the N patches
        h = m.norm_pre(h)
        return h, EmbedContext(grid=grid, num_tokens=h.shape[1], extra={"rope": rope})

    @property
    def supports_fast_blocks(self) -> bool:
        return self.prefix_refusal is None  # pre-norm EvaBlock with Eva / RoPE attention everywhere

    def block(self, i, h, ctx, kv=None, key_mask=None, num_queries=None, lean=False, attn_mask=None):
        blk = self.model.blocks[i]
        rope = ctx.extra["rope"]
        if rope is not None and self._mixed:
            rope = rope[i]
        prompts = h.shape[1] - ctx.num_tokens  # prompt tokens in the sequence, after the prefix tokens
        bias = merge_bias(mask_bias(key_mask, h), attn_mask, h, 0 if kv is None else kv[0].shape[1])
        if kv is None and num_queries is None and not lean:
            return blk(h, rope=pad_rope(rope, prompts), attn_mask=bias)
        if not self.supports_fast_blocks:
            raise BackboneError(self.prefix_refusal)
        pk, pv = kv if kv is not None else (None, None)
        return block_forward(blk, h, rope, pk, pv, bias, num_queries, lean, skip=blk.attn.num_prefix_tokens + prompts)

    def token_kv(self, i, t):
        attn = self.model.blocks[i].attn
        kv = key_values(attn, self.model.blocks[i].norm1(t))
        return kv if isinstance(kv, tuple) else kv.split(_attn_dim(attn), dim=-1)  # 2 x (B, P, A)

    def kv_dim(self) -> int:
        return _attn_dim(self.model.blocks[0].attn)

    def pool_reads_prefix_only(self) -> bool:
        m = self.model
        return getattr(m, "global_pool", None) == "token" and getattr(m, "attn_pool", None) is None

    def block_modules(self):
        return self.model.blocks

    def size_refusal(self):
        return timm_size_refusal(self)

    def mask_refusal(self):
        return None  # Eva blocks take attn_mask

    def pretrained_cfg(self):
        return timm_pretrained_cfg(self)

    def prune_blocks(self, keep, prune_norm=False):
        prune_timm_blocks(self, keep, prune_norm)

    def finish(self, h):
        return self.model.norm(h)

    def pool(self, feats):
        return self.model.forward_head(feats, pre_logits=True)

    def unpooled(self, feats):
        norm = getattr(self.model, "fc_norm", None)  # timm's forward_head with global_pool '': fc_norm per token
        return feats if norm is None else norm(feats)
