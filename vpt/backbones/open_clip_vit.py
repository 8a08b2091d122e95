"""The open_clip visual transformer, with prompts inside the image encoder.

Holds the whole unmodified CLIP model (the text tower stays available for zero-shot heads and text
context) and composes the visual tower's own ``_embeds``, ``transformer.resblocks`` and ``_pool``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ConfigError
from .base import (BackboneAdapter, BackboneError, DataConfig, EmbedContext, TokenLayout, mask_bias, merge_bias,
                   residual_branch)
from .timm_vit import _to_2tuple, prefixed_kv


def _visual_refusal(visual: nn.Module) -> Optional[str]:
    from open_clip.transformer import VisionTransformer
    if not isinstance(visual, VisionTransformer):
        return (f"its image tower is {type(visual).__name__}, not open_clip's VisionTransformer "
                f"(timm- or ResNet-based towers have no token sequence vpt can extend)")
    if not getattr(visual.transformer, "batch_first", True):
        return "its transformer is not batch-first"
    return None


def _prefix_refusal(visual: nn.Module) -> Optional[str]:
    from open_clip.transformer import ResidualAttentionBlock
    for blk in visual.transformer.resblocks:
        if type(blk) is not ResidualAttentionBlock or not blk.attn._qkv_same_embed_dim or not blk.attn.batch_first:
            return f"key/value prefixes need open_clip's ResidualAttentionBlock, this tower has {type(blk).__name__}"
    return None


def mha_with_prefix(attn: nn.MultiheadAttention, x: torch.Tensor, pk: Optional[torch.Tensor] = None,
                    pv: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                    num_queries: Optional[int] = None) -> torch.Tensor:
    """Batch-first ``nn.MultiheadAttention`` self-attention on x (B, N, D) with extra keys/values
    (B, P, D) in front, and queries from the first ``num_queries`` tokens only (None: all)."""
    B, N, D = x.shape
    H = attn.num_heads
    nq = N if num_queries is None else num_queries
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(x[:, :nq], w[:D], None if b is None else b[:D])  # (B, nq, D)
    k, v = prefixed_kv(F.linear(x, w[D:], None if b is None else b[D:]), pk, pv)  # 2 x (B, P+N, D)
    q, k, v = (t.reshape(B, t.shape[1], H, D // H).transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=attn.dropout if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(B, nq, D)  # (B, nq, D)
    return attn.out_proj(out)


def checked_size(x: torch.Tensor, size: tuple) -> torch.Tensor:
    """``x`` (B, C, H, W) itself, after checking that it has the tower's fixed input size (H, W)."""
    if tuple(x.shape[-2:]) != tuple(size):
        raise BackboneError(f"open_clip tower expects {tuple(size)} px input, got {tuple(x.shape[-2:])}; "
                            f"resize images with the model's own preprocessing")
    return x


# one node of an FX graph (timm's get_graph_node_names, torchvision's create_feature_extractor): the traced
# graph checks the input size when it runs
torch.fx.wrap("checked_size")


def _mlp_branch(blk: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return blk.ls_2(blk.mlp(blk.ln_2(h)))


def text_tower(clip_model: nn.Module) -> nn.Module:
    """The module holding the text transformer pieces (CLIP: the model itself; CustomTextCLIP: .text)."""
    for tower in (clip_model, getattr(clip_model, "text", None)):
        if tower is not None and all(hasattr(tower, a) for a in ("token_embedding", "positional_embedding",
                                                                  "transformer", "ln_final")):
            if getattr(tower, "cls_emb", None) is not None:
                break
            return tower
    raise ConfigError(f"learnable text prompts need open_clip's own text transformer; this model's text tower "
                      f"is {type(getattr(clip_model, 'text', clip_model)).__name__} (Hugging Face / CoCa towers "
                      f"are not supported); use head.kind zeroshot or linear_init without text")


class OpenClipTextTower(nn.Module):
    """open_clip's text tower as one module: the CLIP model's own text pieces (CLIP keeps them flat on the
    model, CustomTextCLIP in ``.text``), registered here without copying; ``forward`` is the model's own
    ``encode_text``. The CLIP model itself (and so its ``attn_mask`` buffer) is owned by the backbone adapter.

    ``encode_embeddings`` runs the tower from token embeddings, with optional deep text prompts (MaPLe,
    PromptSRC). It loops over ``transformer.resblocks`` (calling each block as ``Transformer.forward``
    does) so that prompts can replace the context tokens before chosen blocks::

        emb (C, L, W) + pos -> for i, block: [deep: tokens 1..n := prompts_i (n, W)]; block -> ln_final
            -> pool at EOS (C, W) -> @ text_projection (C, E)

    With no deep prompts this is exactly ``CLIP.encode_text`` on the same embeddings (test-guarded).
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.__dict__["_clip"] = clip_model  # not a submodule: the backbone adapter registers the model
        text = getattr(clip_model, "text", None)
        if isinstance(text, nn.Module):
            self.text = text
        else:
            for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
                setattr(self, name, getattr(clip_model, name, None))
        owner = text if isinstance(text, nn.Module) else clip_model
        self.context_length = getattr(owner, "context_length", None)  # open_clip.get_model_tokenize_cfg reads these
        self.vocab_size = getattr(owner, "vocab_size", None)

    def forward(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._clip.encode_text(text, normalize=normalize)

    # --- from token embeddings, with deep prompts ---------------------------------------------------
    @property
    def pieces(self) -> nn.Module:
        """The module with token_embedding / positional_embedding / transformer / ln_final (refuses HF / CoCa)."""
        return text_tower(self._clip)

    @property
    def depth(self) -> int:
        return len(self.pieces.transformer.resblocks)

    @property
    def width(self) -> int:
        return int(self.pieces.token_embedding.weight.shape[1])

    def encode_embeddings(self, emb: torch.Tensor, tokens: torch.Tensor,
                          deep: Optional[Mapping[int, torch.Tensor]] = None) -> torch.Tensor:
        """(C, L, W) token embeddings -> (C, E) text embeddings (not normalised).

        ``tokens`` (C, L) pick the pooled position. ``deep`` maps a block index to (n, W) prompts that
        replace tokens 1..n (right after SOS) at that block's input.
        """
        t = self.pieces
        tr = t.transformer
        cast = tr.get_cast_dtype() if hasattr(tr, "get_cast_dtype") else emb.dtype
        x = emb.to(cast) + t.positional_embedding.to(cast)  # (C, L, W)
        batch_first = getattr(tr, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)  # (L, C, W)
        for i, blk in enumerate(tr.resblocks):
            p = deep.get(i) if deep else None
            if p is not None:
                n = p.shape[-2]
                if batch_first:
                    p = p.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)  # (C, n, W)
                    x = torch.cat([x[:, :1], p, x[:, 1 + n:]], dim=1)  # (C, L, W)
                else:
                    p = p.to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)  # (n, C, W)
                    x = torch.cat([x[:1], p, x[1 + n:]], dim=0)  # (L, C, W)
            if getattr(tr, "grad_checkpointing", False) and torch.is_grad_enabled():  # open_clip's switch
                x = checkpoint(blk, x, None, None, t.attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask=t.attn_mask)
        if not batch_first:
            x = x.transpose(0, 1)  # (C, L, W)
        x = self._pool(t, t.ln_final(x), tokens)  # (C, W)
        proj = t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (C, E)

    @staticmethod
    def _pool(t: nn.Module, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        pool = getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax"))
        rows = torch.arange(x.shape[0], device=x.device)
        if pool == "argmax":  # EOT has the highest id
            return x[rows, tokens.argmax(dim=-1)]
        if pool == "eos":
            eos = getattr(t, "text_eos_id", getattr(t, "eos_id", None))
            return x[rows, (tokens == eos).int().argmax(dim=-1)]
        if pool in ("first", "last"):
            return x[:, 0] if pool == "first" else x[:, -1]
        raise ConfigError(f"text pool type {pool!r} is not supported by learnable text prompts")


class OpenClipViTAdapter(BackboneAdapter):
    """The open_clip CLIP model (both towers). ``image_tower()`` and ``text_tower()`` give views that
    register one tower each over the same modules (vpt.clip.PromptedCLIP composes them)."""

    library = "open_clip"

    def __init__(self, model, config, arch, tag, preprocess_cfg=None, image_only: bool = False):
        super().__init__(model, config, arch, tag)
        if image_only:  # register the image tower alone; the whole model stays reachable as .model
            del self._modules["model"]
            self.__dict__["model"] = model
            self.tower = model.visual
        visual = model.visual
        self.token_refusal = _visual_refusal(visual)
        self._preprocess_cfg = dict(preprocess_cfg or {})
        out_dim = getattr(visual, "output_dim", None)
        if self.token_refusal is not None:
            self.num_features = int(out_dim or 0)
            return
        self.prefix_refusal = _prefix_refusal(visual)
        width = visual.class_embedding.shape[-1]
        self.layout = TokenLayout(
            num_prefix=1,
            embed_dim=int(width),
            depth=len(visual.transformer.resblocks),
            grid=_to_2tuple(visual.grid_size),
            patch_size=_to_2tuple(visual.patch_size),
            has_class_token=True,
        )
        self._pool_owns_norm = visual.attn_pool is not None or visual.final_ln_after_pool
        self.num_features = int(out_dim if visual.proj is not None else width)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    # --- towers ---------------------------------------------------------------------------------
    @property
    def full_adapter(self) -> "OpenClipViTAdapter":
        """The adapter that registers the whole CLIP model (self, unless this is an image-tower view)."""
        return self.__dict__.get("_full", self)

    def image_tower(self) -> "OpenClipViTAdapter":
        """This adapter registering only the image tower: the same modules, facts and identity."""
        full = self.full_adapter
        view = OpenClipViTAdapter(full.model, full.config, full.arch, full.tag, full._preprocess_cfg, image_only=True)
        view.__dict__["_full"] = full
        return view

    def text_tower(self) -> OpenClipTextTower:
        return OpenClipTextTower(self.model)

    def weights_id(self) -> str:
        full = self.full_adapter
        return full.weights_id() if full is not self else super().weights_id()

    def identity(self):
        full = self.full_adapter
        return full.identity() if full is not self else super().identity()

    @property
    def preprocess_cfg(self):
        """open_clip's preprocess config of the image tower (open_clip.get_model_preprocess_cfg's dict)."""
        return self._preprocess_cfg

    def data_config(self) -> DataConfig:
        c = self._preprocess_cfg
        size = c.get("size", getattr(self.visual, "image_size", 224))
        size = _to_2tuple(size)
        return DataConfig(
            input_size=(3, size[0], size[1]),
            mean=tuple(float(v) for v in c.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            std=tuple(float(v) for v in c.get("std", (0.26862954, 0.26130258, 0.27577711))),
            interpolation=str(c.get("interpolation", "bicubic")),
            crop_pct=1.0,  # open_clip resizes the short side to the input size, then centre-crops
        )

    def embed(self, x):
        x = checked_size(x, _to_2tuple(self.visual.image_size))
        h = self.visual._embeds(x)  # (B, 1+N, D): class token, then patches; ln_pre applied
        return h, EmbedContext(grid=self.layout.grid, num_tokens=h.shape[1])

    @property
    def supports_fast_blocks(self) -> bool:
        return self.prefix_refusal is None

    def block(self, i, h, ctx, kv=None, key_mask=None, num_queries=None, lean=False, attn_mask=None):
        blk = self.visual.transformer.resblocks[i]
        if kv is None and key_mask is None and num_queries is None and not lean and attn_mask is None:
            return blk(h)
        if self.prefix_refusal is not None:
            raise BackboneError(self.prefix_refusal)
        # a per-sample key mask goes through SDPA here: nn.MultiheadAttention would need (B*H, L, L)
        pk, pv = kv if kv is not None else (None, None)
        bias = merge_bias(mask_bias(key_mask, h), attn_mask, h, 0 if kv is None else kv[0].shape[1])
        a = mha_with_prefix(blk.attn, blk.ln_1(h), pk, pv, bias, num_queries)
        if num_queries is not None:
            h = h[:, :num_queries]
        h = h + blk.ls_1(a)
        return h + residual_branch(_mlp_branch, blk, h, lean)

    def block_modules(self):
        return self.visual.transformer.resblocks if self.token_refusal is None else None

    @property
    def library_prefix(self) -> str:
        return "model.visual." if "model" in self._modules else "tower."

    def size_refusal(self):
        h, w = _to_2tuple(self.visual.image_size)
        return (f"open_clip's image tower takes {h}x{w} px inputs only; for detection or other "
                f"input sizes use a timm ViT (e.g. timm:vit_base_patch16_clip_224.openai with "
                f"model_kwargs {{dynamic_img_size: true}})")

    def mask_refusal(self):
        return self.prefix_refusal  # per-sample masks go through the composed block (mha_with_prefix)

    def pretrained_cfg(self):
        cfg = super().pretrained_cfg()
        if hasattr(self.visual, "conv1"):
            cfg["first_conv"] = "conv1"
        return cfg

    def feature_info(self):
        if self.layout is None:
            return []
        L = self.layout
        return [dict(module=f"transformer.resblocks.{i}", num_chs=L.embed_dim, reduction=L.patch_size[0])
                for i in range(L.depth)]

    def group_matcher(self, coarse=False):
        return dict(stem=r"^(?:class_embedding|positional_embedding|conv1|ln_pre|patch_dropout)",
                    blocks=[(r"^transformer\.resblocks\.(\d+)", None), (r"^(?:ln_post|proj|attn_pool)", (99999,))])

    def no_weight_decay(self):
        v = self.visual
        return set(v.no_weight_decay()) if hasattr(v, "no_weight_decay") else {"positional_embedding", "class_embedding"}

    def prune_blocks(self, keep, prune_norm=False):
        v = self.visual
        v.transformer.resblocks = v.transformer.resblocks[:keep]
        if prune_norm:
            v.ln_post = nn.Identity()
        self.layout = dataclasses.replace(self.layout, depth=len(v.transformer.resblocks))

    def token_kv(self, i, t):
        blk = self.visual.transformer.resblocks[i]
        D = t.shape[-1]
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        k, v = F.linear(blk.ln_1(t), w[D:], None if b is None else b[D:]).chunk(2, dim=-1)
        return k, v

    def pool_reads_prefix_only(self) -> bool:
        v = self.visual
        return v.attn_pool is None and getattr(v, "pool_type", "tok") == "tok"

    def kv_dim(self) -> int:
        return self.layout.embed_dim

    def finish(self, h):
        # With a plain token/avg pool, ln_post is per-token: apply it here so forward_features returns
        # normalised tokens. Attention pooling (or final_ln_after_pool) keeps ln_post inside _pool.
        return h if self._pool_owns_norm else self.visual.ln_post(h)

    def unpooled_refusal(self):
        if self.token_refusal is not None:
            return f"its image tower {type(self.visual).__name__} pools inside its forward"
        return None

    def pool(self, feats):
        if self.token_refusal is not None:  # non-ViT tower: forward_features already pooled
            return feats
        v = self.visual
        pooled = v._pool(feats)[0] if self._pool_owns_norm else v._global_pool(feats)[0]
        return pooled @ v.proj if v.proj is not None else pooled

    def forward_features(self, x):
        # Only reached for non-ViT towers (pixel prompts): the tower's own forward gives pooled features.
        return self.visual(x)
