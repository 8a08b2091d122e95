"""timm ``Eva`` family (EVA-02, DINOv3-style and other RoPE ViTs).

Eva's attention applies RoPE to every token after its ``num_prefix_tokens`` class/register tokens.
Prompt tokens sit right after those, so the RoPE table is extended with identity rotations (sin 0,
cos 1) for the prompt positions: prompts carry no position, like the class token.
"""
from __future__ import annotations

import torch

from .base import BackboneAdapter, DataConfig, EmbedContext, mask_bias, merge_bias
from .timm_vit import prune_timm_blocks, timm_data_config, timm_layout, timm_pretrained_cfg, timm_size_refusal


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


class TimmEvaAdapter(BackboneAdapter):
    library = "timm"
    prefix_refusal = "key/value prefixes are not implemented for Eva's RoPE attention"

    def __init__(self, model, config, arch, tag):
        super().__init__(model, config, arch, tag)
        m = self.model
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

    def block(self, i, h, ctx, kv=None, key_mask=None, attn_mask=None):
        assert kv is None, self.prefix_refusal
        rope = ctx.extra["rope"]
        if rope is not None:
            rope = rope[i] if self._mixed else rope
            rope = pad_rope(rope, h.shape[1] - ctx.num_tokens)
        return self.model.blocks[i](h, rope=rope, attn_mask=merge_bias(mask_bias(key_mask, h), attn_mask, h))

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
