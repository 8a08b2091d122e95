"""What the prompted loop needs from a backbone, independent of the library behind it."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..config import Checked, option
from ..errors import BackboneError  # noqa: F401  (re-exported)

NEVER = 1 << 30  # a block index past any depth: "no block needs autograd"


@dataclass(frozen=True)
class Capabilities:
    """What an adapter offers prompts and callers. Each field: None = supported, else the reason it is not;
    :meth:`BackboneAdapter.require` is the one check (prompts, multitask and detection all use it)."""
    tokens: Optional[str] = None  # a token sequence prompts can join (vpt_shallow, vpt_deep)
    key_values: Optional[str] = None  # key/value prefixes inside attention (vpt_prefix)
    per_sample_masks: Optional[str] = None  # a key mask per sample (multitask batches mixing prompt lengths)
    any_input_size: Optional[str] = None  # inputs of any size (detection resizes images freely)
    unpooled_features: Optional[str] = None  # forward_features keeps its token / spatial axes (global_pool '')
    fast_blocks: bool = False  # prompts as keys/values only, query subsets and lean MLPs (vpt.encode fast paths)


# a prompt config's ``needs`` -> the capabilities it requires
PROMPT_NEEDS = {"tokens": ("tokens",), "kv": ("tokens", "key_values"), "pixels": (), "text": ()}

# what still works / how to get the capability, per capability
CAPABILITY_FIX = {
    "tokens": "Pixel prompts (pixel_pad, pixel_patch) still work with this backbone.",
    "key_values": "Token prompts (vpt_shallow, vpt_deep) and pixel prompts work with this backbone.",
    "per_sample_masks": "Run tasks whose prompts differ in length in separate batches.",
    "any_input_size": "Resize inputs to the backbone's input size, or use a backbone built for any size.",
    "unpooled_features": "Use a pooling ('token', 'avg', 'backbone'), or a timm backbone for unpooled features.",
}


@dataclass
class BackboneConfig:
    name: str = "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k"  # library:architecture[.tag or /tag]
    weights: Optional[str] = None  # local weights file (safetensors or torch state dict); overrides the tag
    pretrained: bool = True  # False: random init with init_seed (tests, random-init controls)
    init_seed: int = 0  # seed of the random init when pretrained is False
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to the library's create function


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence a ViT-style backbone runs on: [prefix (cls/reg/dist) | prompts | patches]."""
    num_prefix: int  # class + register + distillation tokens in front of the patches
    embed_dim: int
    depth: int
    grid: Tuple[int, int]  # patch grid of the default input size
    patch_size: Tuple[int, int]
    has_class_token: bool


@dataclass
class DataConfig(Checked):
    """How the backbone expects its input; saved in artifacts so evaluation matches training."""
    input_size: Tuple[int, int, int] = option((3, 224, 224), "(channels, height, width)", range=(1, 8192))
    mean: Tuple[float, float, float] = option((0.485, 0.456, 0.406), "per-channel mean", range=(-10.0, 10.0))
    std: Tuple[float, float, float] = option((0.229, 0.224, 0.225), "per-channel std", range=(1e-6, 10.0))
    interpolation: str = option("bicubic", "resize interpolation (PIL / timm name)")
    crop_pct: float = option(0.875, "centre crop share of the resized image (timm crop_pct)", range=(0.05, 10.0))


def take_indices(depth: int, indices: Union[None, int, Sequence[int]]) -> Tuple[List[int], int]:
    """timm's convention: None = every block, int n = the last n blocks, a list = those (negatives count back)."""
    if indices is None:
        idx = list(range(depth))
    elif isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices} must be in 1..{depth}")
        idx = list(range(depth - indices, depth))
    else:
        idx = [i + depth if i < 0 else i for i in indices]
        if any(not 0 <= i < depth for i in idx):
            raise ValueError(f"indices {list(indices)} out of range for {depth} blocks")
    return idx, max(idx)


@dataclass
class EmbedContext:
    """Per-forward values the blocks need besides the tokens (e.g. RoPE tables, the patch grid)."""
    grid: Tuple[int, int]
    num_tokens: int  # sequence length before prompts are inserted (prefix + patches)
    extra: Dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects (safetensors, or torch weights_only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r}; pass an existing file with --weights / weights=")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise BackboneError(f"cannot read weights file {path!r} ({e}); is it a complete safetensors file?") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(f"cannot read weights file {path!r} as a torch state dict ({e})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def mask_bias(key_mask: Optional[torch.Tensor], h: torch.Tensor) -> Optional[torch.Tensor]:
    """bool (B, Lk) key mask -> additive attention bias (B, 1, 1, Lk): 0 where valid, -inf elsewhere, in the
    dtype the attention of hidden states ``h`` computes in (the autocast dtype under autocast, where q and k
    are bf16/fp16 while ``h`` stays fp32: a fused attention kernel wants the bias in q's dtype)."""
    if key_mask is None:
        return None
    kind = h.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    return bias.masked_fill(~key_mask, float("-inf"))[:, None, None, :]  # (B, 1, 1, Lk)


def fx_tracing() -> bool:
    """True under torch.fx symbolic tracing (timm's get_graph_node_names, torchvision's
    create_feature_extractor): shape-dependent choices then take their static, built-size branch."""
    fx = torch.fx._symbolic_trace
    # is_fx_tracing() is also true under torch.export and warns so on every call in torch >= 2.14;
    # is_fx_symbolic_tracing() asks about symbolic tracing alone (older torch has only is_fx_tracing()).
    for name in ("is_fx_symbolic_tracing", "is_fx_tracing_symbolic_tracing"):
        if hasattr(fx, name):
            return getattr(fx, name)()
    return fx.is_fx_tracing()


def pad_attn_mask(attn_mask: torch.Tensor, k: int, num_prompts: int) -> torch.Tensor:
    """A library-format attention mask over the [prefix | patches] sequence (..., Lq, L) -> the sequence with
    ``num_prompts`` prompt tokens after the k prefix tokens: prompts attend and are attended freely (True /
    0 in the inserted columns, and rows when the mask has one row per token)."""
    if not num_prompts:
        return attn_mask
    fill = True if attn_mask.dtype == torch.bool else 0.0
    L = attn_mask.shape[-1]
    cols = attn_mask.new_full((*attn_mask.shape[:-1], num_prompts), fill)
    m = torch.cat([attn_mask[..., :k], cols, attn_mask[..., k:]], dim=-1)  # (..., Lq, L+P)
    if m.shape[-2] == L and L > 1:
        rows = m.new_full((*m.shape[:-2], num_prompts, m.shape[-1]), fill)
        m = torch.cat([m[..., :k, :], rows, m[..., k:, :]], dim=-2)  # (..., L+P, L+P)
    return m


def merge_bias(bias: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor], h: torch.Tensor,
               num_kv: int = 0) -> Optional[torch.Tensor]:
    """One additive attention bias from a key-mask bias (B, 1, 1, Pkv+L) and a caller's attn_mask (bool or
    additive, over the L sequence keys; ``num_kv`` key/value prefixes in front are always attendable)."""
    if attn_mask is None:
        return bias
    if bias is None and not num_kv:
        return attn_mask  # as the library would get it
    if attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=h.dtype, device=attn_mask.device).masked_fill(
            ~attn_mask, float("-inf"))
    if num_kv:
        attn_mask = torch.cat([attn_mask.new_zeros((*attn_mask.shape[:-1], num_kv)), attn_mask], dim=-1)
    return attn_mask if bias is None else bias + attn_mask.to(bias.dtype)


def residual_branch(fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], blk: nn.Module, h: torch.Tensor,
                    lean: bool = False) -> torch.Tensor:
    """``fn(blk, h)``; with ``lean`` (and autograd on) under non-reentrant checkpointing, so its inner
    activations are recomputed in backward instead of kept (the fast blocks' lean mode)."""
    if lean and torch.is_grad_enabled() and h.requires_grad:
        from torch.utils.checkpoint import checkpoint
        return checkpoint(fn, blk, h, use_reentrant=False)
    return fn(blk, h)


class BackboneAdapter(nn.Module):
    """Wraps an unmodified library model and exposes the pieces of its forward pass.

    Token-capable adapters implement ``embed``, ``block``, ``finish`` and ``pool``; the single loop
    over blocks lives in ``vpt.model.PromptedModel``. Pixel-only adapters implement
    ``forward_features`` and ``pool`` and set ``token_refusal`` to the reason token prompts can't work.
    """

    library: str = ""
    token_refusal: Optional[str] = None  # None: token prompts supported; else why not
    prefix_refusal: Optional[str] = None  # None: key/value prefixes supported; else why not

    def __init__(self, model: nn.Module, config: BackboneConfig, arch: str, tag: Optional[str]):
        super().__init__()
        self.model = model
        self.config = config
        self.arch = arch
        self.tag = tag
        self._weights_id = None

    # --- identity -------------------------------------------------------------------------------
    @property
    def supports_tokens(self) -> bool:
        return self.token_refusal is None

    def weights_id(self) -> str:
        """'hub:<tag>', 'file:<sha256>' or 'random:<seed>': which weights these are."""
        if self._weights_id is None:
            c = self.config
            if c.weights:
                self._weights_id = "file:" + sha256_file(c.weights)
            elif not c.pretrained:
                self._weights_id = f"random:{c.init_seed}"
            else:
                self._weights_id = f"hub:{self.tag or 'default'}"
        return self._weights_id

    def identity(self) -> Dict[str, Any]:
        return {
            "name": self.config.name,
            "library": self.library,
            "arch": self.arch,
            "tag": self.tag,
            "weights_id": self.weights_id(),
            "weights_file": self.config.weights,
            "pretrained": self.config.pretrained,
            "init_seed": self.config.init_seed,
            "model_kwargs": dict(self.config.model_kwargs),
        }

    # --- shape facts ----------------------------------------------------------------------------
    layout: Optional[TokenLayout] = None
    num_features: int = 0  # width of pool()'s output

    def data_config(self) -> DataConfig:
        raise NotImplementedError

    # --- token path -----------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, EmbedContext]:
        """Images (B, C, H, W) -> tokens (B, k+N, D) with the library's own patch/pos/prefix embedding."""
        raise NotImplementedError

    def block(self, i: int, h: torch.Tensor, ctx: EmbedContext,
              kv: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
              key_mask: Optional[torch.Tensor] = None, num_queries: Optional[int] = None,
              lean: bool = False) -> torch.Tensor:
        """Run block ``i`` on tokens h (B, L, D).

        ``kv``: (B, P, A) extra keys/values in front of the sequence's own. ``key_mask``: bool (B, P + L),
        True where a key may be attended to (extra keys first); used when samples of one batch carry
        different prompts (per-sample task prompts). None means every key is valid.
        ``num_queries`` and ``lean`` are only passed when ``supports_fast_blocks``: outputs for the first
        ``num_queries`` tokens only (the rest are keys/values), and recomputation of the widest
        activations in backward.
        """
        raise NotImplementedError

    # Fast paths (opt-in per adapter; vpt.model uses them only when this is True):
    supports_fast_blocks: bool = False

    def token_kv(self, i: int, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, P, A) that tokens t (B, P, D) would have in block ``i``'s attention: a
        prompt whose output the next block discards only needs these."""
        raise NotImplementedError

    def pool_reads_prefix_only(self) -> bool:
        """True when ``pool`` reads nothing but the prefix (class/register/distillation) tokens of the
        features (class-token pooling), so the last block only needs to compute those."""
        return False

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        """Block output (prompts already stripped) -> the library's forward_features output."""
        raise NotImplementedError

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """forward_features output -> the library's own pooled pre-logits (B, num_features)."""
        raise NotImplementedError

    def block_modules(self) -> Optional[nn.ModuleList]:
        """The library's own blocks that ``block(i, ...)`` runs (token adapters); None for pixel-only ones."""
        return None

    def first_trainable_block(self) -> int:
        """Where autograd must start for the backbone's own trainable parameters (LoRA weights, blocks a
        user unfroze, full fine-tuning): the first block holding one; -1 when one sits outside the blocks
        (it may feed them, so conservatively from the image); NEVER when every parameter is frozen."""
        if not any(p.requires_grad for p in self.parameters()):
            return NEVER
        blocks = self.block_modules()
        if blocks is None:
            return -1
        in_blocks = {id(p) for p in blocks.parameters()}
        if any(p.requires_grad and id(p) not in in_blocks for p in self.parameters()):
            return -1
        return next(i for i, blk in enumerate(blocks) if any(p.requires_grad for p in blk.parameters()))

    # --- the library model's own API (vpt.timm_api delegates here) ------------------------------
    library_prefix: str = "model."  # where the library model's parameter names start, relative to the adapter

    def pretrained_cfg(self) -> Dict[str, Any]:
        """The library model's pretrained config (timm's ``pretrained_cfg`` keys)."""
        d = self.data_config()
        return {"architecture": self.arch, "tag": self.tag, "input_size": tuple(d.input_size), "mean": tuple(d.mean),
                "std": tuple(d.std), "interpolation": d.interpolation, "crop_pct": d.crop_pct, "crop_mode": "center"}

    def feature_info(self) -> list:
        """timm-style feature info: dicts with ``module`` (relative to library_prefix), ``num_chs``, ``reduction``."""
        return list(getattr(self.model, "feature_info", None) or [])

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups as timm's ``group_matcher`` (names relative to library_prefix)."""
        return dict(self.model.group_matcher(coarse)) if hasattr(self.model, "group_matcher") else {}

    def no_weight_decay(self) -> set:
        return set(self.model.no_weight_decay()) if hasattr(self.model, "no_weight_decay") else set()

    def prune_blocks(self, keep: int, prune_norm: bool = False) -> None:
        """Keep the first ``keep`` blocks of the library model (in place); optionally drop its final norm."""
        raise BackboneError(f"{type(self).__name__} cannot prune blocks")

    # --- pixel-only path ------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(self.token_refusal or "forward_features")

    # --- capabilities: declared once, checked in one place ----------------------------------------
    def size_refusal(self) -> Optional[str]:
        """None when any input size works, else why not and the fix (adapters override)."""
        return None

    def unpooled_refusal(self) -> Optional[str]:
        """None when forward_features keeps the token / spatial axes (token adapters do; others override)."""
        return self.token_refusal

    def unpooled(self, feats: torch.Tensor) -> torch.Tensor:
        """forward_features output -> the library's head path with no pooling (timm's global_pool=''): what
        its forward_head(pre_logits=True) applies after pooling, on every token (timm: fc_norm)."""
        return feats

    def mask_refusal(self) -> Optional[str]:
        """None when blocks take a per-sample key mask, else why not (adapters override)."""
        return self.token_refusal

    @property
    def capabilities(self) -> Capabilities:
        tokens = self.token_refusal
        return Capabilities(tokens=tokens, key_values=tokens or self.prefix_refusal,
                            per_sample_masks=tokens or self.mask_refusal(), any_input_size=self.size_refusal(),
                            unpooled_features=self.unpooled_refusal(), fast_blocks=bool(self.supports_fast_blocks))

    def require(self, *needs: str, who: str) -> None:
        """Raise BackboneError naming ``who``, the missing capability's reason and what to do instead."""
        caps = self.capabilities
        for need in needs:
            reason = getattr(caps, need)
            if reason is not None:
                raise BackboneError(f"{who} cannot be used with backbone '{self.config.name}': {reason}. "
                                    f"{CAPABILITY_FIX[need]}")

    def check_prompt(self, kind: str, needs: str) -> None:
        """Refuse prompt kinds this architecture cannot take (``needs``: tokens | kv | pixels | text)."""
        self.require(*PROMPT_NEEDS.get(needs, ()), who=f"prompt kind '{kind}'")
