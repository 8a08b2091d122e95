"""PromptedModel: a frozen backbone adapter + a prompt kind + a light head; the ONE loop over blocks.

Data through the model (token prompts)::

    image -> [pixel prompt] -> adapter.embed        (B, k+N, D)  library's own patch/pos/prefix embedding
          -> before block i: insert / replace P prompt tokens after the k prefix tokens  (B, k+P+N, D)
          -> adapter.block(i) [with key/value prefixes]
          -> strip prompts (B, k+N, D) -> adapter.finish (library norm) -> pooling -> head

How a block runs with its prompts (reference, fast, checkpointed, masked, FX-traced) is a strategy in
vpt.encode, chosen once per call by ``choose_blocks``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .backbones import BackboneAdapter, BackboneConfig, BackboneError, create_backbone
from .backbones.base import NEVER, DataConfig, fx_tracing, take_indices  # noqa: F401  (take_indices re-exported)
from .config import HEAD_SECTION, METHOD_SECTION, ConfigError, one_of, option, to_dict
from .encode import FanOut, choose_blocks, strip_prompts
from .heads import HeadConfig
from .prompts import build_prompt, prompt_to_dict, resolve_prompt_config
from .registry import HEADS, MODEL_TYPES
from .timm_api import TimmModelApi


@dataclass
class ClassifierSections:
    """What a classifier's artifact (``adapter_config.json``) and a recipe's model section hold besides the
    backbone, the image prompt and the classes; ``vpt.schema`` walks it in strict mode."""
    head: Any = one_of(HEAD_SECTION, default_factory=lambda: {"kind": "linear"},
                       help="the classification head ({kind: linear | mlp, pool, ...})")
    train_backbone: bool = option(False, "unfreeze the backbone (full fine-tuning baseline)")
    preprocessing: DataConfig = option(default_factory=DataConfig, help="the input the backbone expects")
    method: Any = one_of(METHOD_SECTION, help="a vision PEFT method on the frozen backbone ({kind: adapter | "
                                              "adaptformer | ssf | bitfit | fact | partial | convpass | "
                                              "repadapter | e2vpt, ...}; vpt.methods); null: none")


_OWN = object()  # sentinel: "this model's own prompt"


class AdapterMixin:
    """peft's names for what an adapter model trains and saves; shared by every model type."""

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def get_nb_trainable_parameters(self) -> Tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """peft's format, so that users' scripts that grep it keep working."""
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile {type(self).__name__}: its prompt loop over the library's blocks is "
            f"Python, and TorchScript is deprecated upstream. Export with torch.export.export(model, (images,)) "
            f"(or ONNX via torch.onnx.export(..., dynamo=True)), or use torch.compile / torch.jit.trace")

    def upgrade_tensors(self, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Saved trainable tensors in an older vpt layout -> this model's names (each prompt module converts
        its own); tensors already in today's names pass through."""
        from .prompts.base import PromptModule
        for name, module in self.named_modules():
            if isinstance(module, PromptModule):
                tensors = module.upgrade_tensors(tensors, f"{name}." if name else "")
        return tensors

    def save_pretrained(self, save_directory: str) -> None:
        from .artifact import save_pretrained
        save_pretrained(self, save_directory)

    def push_to_hub(self, repo_id: str, private: Optional[bool] = None, revision: Optional[str] = None,
                    commit_message: Optional[str] = None, token: Optional[str] = None, create_pr: bool = False):
        """Save this model's artifact and upload it with a model card (``vpt.hub_push.push_to_hub``; needs
        ``pip install 'vpt[hub]'``). Returns the commit; ``vpt.from_pretrained("org/name")`` loads it."""
        from .hub_push import push_to_hub
        return push_to_hub(self, repo_id, private=private, revision=revision, commit_message=commit_message,
                           token=token, create_pr=create_pr)

    # --- what a training loop asks besides the logits (methods with extra losses or epoch-end work) ----
    def auxiliary_loss(self) -> Optional[torch.Tensor]:
        """Loss terms of the last training forward besides cross-entropy (a batch mean), or None; taken once."""
        return None

    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Called after training epoch ``epoch`` (0-based) of ``epochs``."""

    def run_state(self) -> Dict[str, torch.Tensor]:
        """Tensors a resumed run needs besides the trainable ones (saved in the run state)."""
        return {}

    def load_run_state(self, state: Dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"this model keeps no extra run state, got {sorted(state)[:3]}")

    # --- what each tensor is, for the optimizer (weight decay, head lr) ---------------------------------
    def role_modules(self) -> Dict[str, List[nn.Module]]:
        """Submodules by role, the first role to claim a tensor wins: 'prompt' (every prompt module),
        'backbone', 'head'; what no role claims is 'backbone'. Models with other parts override this."""
        from .prompts.base import PromptModule
        head = getattr(self, "head", None)
        method = getattr(self, "method", None)
        return {"prompt": [m for m in self.modules() if isinstance(m, PromptModule)],
                "head": [head] if isinstance(head, nn.Module) else [],
                "adapter": method.modules() if method is not None else []}

    def param_roles(self) -> Dict[str, Tuple[str, ...]]:
        """Parameter name -> its roles: the part it belongs to ('prompt' | 'head' | 'backbone') and, for
        tensors of a normalisation layer or a module's bias, 'norm' / 'bias'. Read by
        ``vpt.engine.optim.param_groups`` (no weight decay on prompt / norm / bias; ``optim.head_lr``)."""
        owner: Dict[int, str] = {}
        for role, modules in self.role_modules().items():
            for m in modules:
                for p in m.parameters():
                    owner.setdefault(id(p), role)
        kind: Dict[int, str] = {}
        for m in self.modules():
            for pname, p in m.named_parameters(recurse=False):
                if isinstance(m, NORM_LAYERS):
                    kind[id(p)] = "norm"
                elif pname == "bias":
                    kind.setdefault(id(p), "bias")
        return {n: (owner.get(id(p), "backbone"),) + ((kind[id(p)],) if id(p) in kind else ())
                for n, p in self.named_parameters()}


# normalisation layers (torch's; timm's and torchvision's LayerNorm / LayerNorm2d subclass them)
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)


def sample_patch_tokens(backbone: BackboneAdapter, data_config: DataConfig, n: int) -> torch.Tensor:
    """``n`` patch tokens (n, D) as the frozen backbone's own embedding makes them (patch embedding + position,
    prefix tokens dropped) from images of standard normal noise in normalised pixel units, drawn at random
    positions with the global RNG: what prompt ``init: patch_embed`` starts from."""
    C, H, W = data_config.input_size
    k = backbone.layout.num_prefix
    gh, gw = backbone.layout.grid
    images = -(-n // (gh * gw)) + 1  # enough tokens to draw n distinct ones
    param = next(backbone.parameters(), None)
    x = torch.randn(images, C, H, W, device=param.device if param is not None else None)
    with torch.no_grad():
        h, _ = backbone.embed(x)  # (images, k+N, D)
    tokens = h[:, k:].reshape(-1, h.shape[-1])  # (images*N, D)
    return tokens[torch.randperm(tokens.shape[0], device=tokens.device)[:n]].float().cpu()


def sample_block_tokens(backbone: BackboneAdapter, images: torch.Tensor, layers: Sequence[int], n: int,
                        seed: int = 0) -> Dict[int, torch.Tensor]:
    """For each block ``l`` in ``layers``: ``n`` patch tokens (n, D), drawn at random without replacement from
    the patch tokens (prefix tokens dropped) that enter block ``l`` when ``images`` (B, C, H, W, normalised as
    the backbone expects) run through the frozen backbone without prompts, in eval mode: SPT's random-sample
    prompt init (Wang et al. 2024). The draws use a generator seeded with ``seed``, not the global RNG."""
    k, last = backbone.layout.num_prefix, max(layers)
    wanted = set(layers)
    generator = torch.Generator().manual_seed(int(seed))
    was_training = backbone.training
    backbone.eval()
    out: Dict[int, torch.Tensor] = {}
    try:
        with torch.no_grad():
            h, ctx = backbone.embed(images)  # (B, k+N, D)
            for i in range(last + 1):
                if i in wanted:
                    tokens = h[:, k:].reshape(-1, h.shape[-1])  # (B*N, D)
                    if tokens.shape[0] < n:
                        raise ConfigError(f"prompt init data needs {n} patch tokens per block and {images.shape[0]} "
                                          f"image(s) give {tokens.shape[0]}; use fewer prompt tokens or more images")
                    pick = torch.randperm(tokens.shape[0], generator=generator)[:n]
                    out[i] = tokens[pick.to(tokens.device)].float().cpu()
                if i < last:
                    h = backbone.block(i, h, ctx)
    finally:
        backbone.train(was_training)
    return out


def init_prompts_from_images(model: nn.Module, images: torch.Tensor, seed: int = 0) -> int:
    """Prompt ``init: data`` for every :class:`PromptedModel` inside ``model`` whose prompts still wait for it
    (a classifier, each of several models sharing one backbone, a CLIP model's image tower), each drawn exactly as
    :meth:`PromptedModel.init_prompts_from_images` draws it alone. Returns how many were drawn."""
    towers = [m for m in model.modules()
              if isinstance(m, PromptedModel) and getattr(m.prompt, "pending_data_init", False)]
    return sum(m.init_prompts_from_images(images, seed) for m in towers)


class PromptedModel(AdapterMixin, TimmModelApi, nn.Module):
    """Frozen backbone + prompts + head. Build with :func:`vpt.create_model`."""

    model_type = "classifier"
    task = "classification"  # the vpt task that evaluates / predicts its artifacts (vpt.Artifact.task)
    config_sections = ClassifierSections  # the artifact sections this model type adds (vpt.schema)

    def __init__(self, backbone: BackboneAdapter, prompt: Any = None, num_classes: int = 0,
                 head: Union[str, Dict[str, Any], HeadConfig, None] = None, class_names: Optional[List[str]] = None,
                 train_backbone: bool = False, method: Any = None):
        super().__init__()
        self.backbone = backbone
        self.train_backbone = bool(train_backbone)
        self.data_config = backbone.data_config()
        cfg = resolve_prompt_config(prompt)
        self.prompt_config = cfg
        if cfg is not None:
            backbone.check_prompt(cfg.kind, cfg.needs)
        facts = {"kv_dim": backbone.kv_dim()} if hasattr(backbone, "kv_dim") and backbone.supports_tokens else {}
        if backbone.supports_tokens:
            facts["patch_tokens"] = lambda n: sample_patch_tokens(backbone, self.data_config, n)
        self.prompt = build_prompt(cfg, backbone.layout, self.data_config, **facts)

        self.head_config = HEAD_SECTION.resolve(head or {}, where="head")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if num_classes and len(class_names) != num_classes:
                raise ConfigError(f"{len(class_names)} class names for num_classes={num_classes}")
            num_classes = num_classes or len(class_names)
        self._check_pool(self.head_config, num_classes)
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.num_features = self._pooled_width(self.head_config)
        self.head = (HEADS.get(self.head_config.kind).factory(self.num_features, self.num_classes, self.head_config)
                     if self.num_classes else None)

        for p in self.backbone.parameters():
            p.requires_grad_(self.train_backbone)
        self.method_config = METHOD_SECTION.resolve(method, where="method")
        if self.method_config is not None and self.train_backbone:
            raise ConfigError(f"method {self.method_config.kind!r} tunes part of a frozen backbone, and "
                              f"train_backbone unfreezes all of it; set train_backbone: false, or drop the method")
        from .methods import build_method  # wraps backbone submodules; its tensors live in the backbone
        self.__dict__["method"] = build_method(self.method_config, backbone) if self.method_config else None
        if self.method is not None:  # a prompt + method combination (E2VPT) composes the prompt module
            self.prompt = self.method.wrap_prompt(self.prompt, self.data_config)
        self.fast = True  # False: the reference path (prompts always in the sequence; tests compare both)
        self.lean = 0.0  # share of blocks in lean mode (set_lean)
        self.train(False)

    def _check_pool(self, cfg: HeadConfig, num_classes: int) -> None:
        bb = self.backbone
        if cfg.pool == "none":
            bb.require("unpooled_features", who="head.pool 'none' (timm's global_pool '')")
            if num_classes and not bb.supports_tokens:
                raise ConfigError("head.pool 'none' keeps this backbone's (B, C, H, W) feature map, which a head "
                                  "cannot classify; use num_classes=0 for the map, or a pooling (backbone)")
            return
        if cfg.pool != "backbone" and not bb.supports_tokens:
            raise ConfigError(f"head.pool '{cfg.pool}' needs a token backbone; use pool: backbone")
        if cfg.pool == "cls" and not bb.layout.has_class_token:
            raise ConfigError("head.pool 'cls' needs a class token, and this backbone has none; use avg or backbone")

    def _pooled_width(self, cfg: HeadConfig) -> int:
        bb = self.backbone
        return bb.layout.embed_dim if cfg.pool != "backbone" and bb.supports_tokens else bb.num_features

    # --- modes ----------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()  # frozen: no dropout / drop-path / patch-dropout noise
            for m in (self.method.modules() if getattr(self, "method", None) is not None else ()):
                m.train(mode)  # ... but a method's own layers (their dropout) train
        return self

    def init_prompts_from_images(self, images: torch.Tensor, seed: int = 0) -> bool:
        """Prompt ``init: data`` (SPT): each prompted block's prompts become patch tokens sampled from the tokens
        that enter that block for ``images`` (a batch of training images, normalised as ``data_config`` says),
        with the frozen backbone and no prompts (:func:`sample_block_tokens`). ``vpt train`` calls this with
        the run's seed; a model built with ``create_model`` alone keeps VPT's uniform init until it is called.
        Returns False (and changes nothing) for any other init."""
        prompt = self.prompt
        if prompt is None or getattr(prompt.config, "init", None) != "data" or not prompt.num_tokens:
            return False
        param = next(self.backbone.parameters(), None)
        images = images.to(param.device) if param is not None else images
        prompt.init_from_tokens(sample_block_tokens(self.backbone, images, prompt.layers, prompt.num_tokens, seed))
        return True

    # --- merge (methods that fold into the backbone's weights: vpt.methods) -----------------------
    def merge(self, alpha: float = 1.0) -> "PromptedModel":
        """Fold the model's method into the backbone's weights (SSF, BitFit): the plain backbone's speed.
        ``alpha`` in [0, 1] interpolates WiSE-style between the frozen (0) and tuned (1) weights."""
        if self.method is None:
            raise ConfigError("this model has no method to merge (model.method is null); prompts stay in the "
                              "sequence and cannot fold into weights")
        self.method.merge(alpha)
        return self

    def unmerge(self) -> "PromptedModel":
        """Undo :meth:`merge`: the backbone's frozen weights back exactly."""
        if self.method is None:
            raise ConfigError("this model has no method to unmerge (model.method is null)")
        self.method.unmerge()
        return self

    @property
    def grad_from(self) -> int:
        """First block whose input depends on this model's prompt (-1: the image; NEVER: none)."""
        return NEVER if self.prompt is None else self.prompt.first_layer

    def autograd_from(self, x: torch.Tensor, prompt_from: Optional[int] = None) -> int:
        """First block whose input needs autograd: the earliest of the first prompted block, the first block
        holding a trainable backbone parameter, and -1 (from the image) when the input itself requires grad
        (saliency maps, adversarial examples, input-gradient penalties). Earlier blocks run without autograd:
        an optimisation that never changes a gradient anyone asked for."""
        if not torch.is_grad_enabled():
            return NEVER
        if fx_tracing() or x.requires_grad:  # a traced graph has no grad switches: autograd everywhere
            return -1
        return min(self.grad_from if prompt_from is None else prompt_from, self.backbone.first_trainable_block())

    # --- forward --------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, take: Sequence[int] = (), stop: Optional[int] = None,
                prompt: Any = _OWN, grad_from: Optional[int] = None, last_queries: Optional[int] = None,
                sets: int = 1, attn_mask: Optional[torch.Tensor] = None):
        """Pixels -> block outputs with prompts stripped (and the blocks in ``take``, and the embed context);
        the single loop over blocks. How each block runs with its prompts is a strategy of vpt.encode, chosen
        once here by ``choose_blocks``; the loop itself keeps the autograd window and the prompt sets.

        ``prompt`` defaults to this model's prompt; vpt.multitask passes a per-sample mix of task
        prompts (or None for the plain backbone). ``stop``: the last block to run. ``last_queries=n``: the last
        block computes only the first n tokens (the caller pools nothing else). ``sets=K``: the batch runs
        once through the embedding and the blocks before the first prompted one, then continues as K copies
        (see :meth:`forward_features_sets`). ``attn_mask``: a caller's mask over [prefix | patches].
        """
        bb = self.backbone
        prompt = self.prompt if prompt is _OWN else prompt
        if bb.token_refusal is not None:
            raise BackboneError(f"this backbone has no token sequence: {bb.token_refusal}")
        grad = torch.is_grad_enabled()
        grad_from = self.autograd_from(x, grad_from)
        lean_blocks = self._lean_blocks() if (self.lean and grad and self.training) else frozenset()
        blocks = choose_blocks(bb, prompt, fast=self.fast, attn_mask=attn_mask, lean_blocks=lean_blocks,
                               last_queries=last_queries, take=take)
        fan = FanOut(sets, prompt)
        if prompt is not None and prompt.uses_pixels:
            x = prompt.pixels(fan.image(x))
        with torch.set_grad_enabled(grad and grad_from < 0):
            h, ctx = bb.embed(x)  # (B, k+N, D)
        k, P, inter = bb.layout.num_prefix, 0, []
        depth = bb.layout.depth if stop is None else stop + 1
        for i in range(depth):
            h = fan.before_block(i, h)
            with torch.set_grad_enabled(grad and i >= grad_from):
                t = prompt.tokens(i, h.shape[0]) if prompt is not None and prompt.uses_tokens else None
                kv = prompt.kv(i, h.shape[0]) if prompt is not None and prompt.uses_kv else None
                h, P = blocks.step(i, h, P, ctx, t, kv, last=i == depth - 1)
            if i in take:
                inter.append(strip_prompts(h, k, P))
        return strip_prompts(fan.end(h), k, P), inter, ctx

    def forward_features_sets(self, x: torch.Tensor, prompt: Any, sets: int,
                              last_queries: Optional[int] = None) -> torch.Tensor:
        """One batch under ``sets`` (K) prompt sets: images (B, C, H, W) -> features (K*B, ...) as
        :meth:`forward_features` gives them, set-major (rows k*B .. k*B+B-1 are the batch under set k).

        ``prompt`` answers for K*B rows, set by set: e.g. K tasks' prompts as
        ``vpt.multitask.PromptMix(prompts, torch.arange(K).repeat_interleave(B), num_prefix, block=B)``
        (each set's prompt broadcast to its B rows, so set k computes, and back-propagates, exactly as its
        prompt alone would). The embedding and the frozen blocks before the prompt's first block run once
        for the batch, then the batch continues as K copies: K tasks, or K trainings of one task, on the
        same images for the price of the shared part. Autograd starts at the prompt's first block (or at the
        first trainable backbone block). ``last_queries=n``: the last block computes only the first n tokens
        (for heads that pool the prefix only). A backbone without a token sequence (pixel prompts on a CNN)
        shares nothing: each set's pixels run through the whole backbone."""
        if sets < 1:
            raise ValueError(f"sets must be >= 1, got {sets}")
        bb = self.backbone
        if not bb.supports_tokens:
            x = x.repeat(sets, 1, 1, 1)  # (K*B, C, H, W)
            pixels = prompt is not None and prompt.uses_pixels
            if pixels:
                x = prompt.pixels(x)
            with torch.set_grad_enabled(self.autograd_from(x, -1 if pixels else NEVER) < NEVER):
                return bb.forward_features(x)  # (K*B, C', h, w)
        grad_from = prompt.first_layer if prompt is not None else None
        h, _, _ = self._encode(x, prompt=prompt, grad_from=grad_from, last_queries=last_queries, sets=sets)
        return bb.finish(h)  # (K*B, k+N, D)

    def set_lean(self, mode: Union[bool, float] = True) -> "PromptedModel":
        """Lean mode: recompute the widest activations (the MLPs' hidden layer; whole blocks where the
        adapter has no fast blocks) in backward instead of keeping them. Less memory, a little slower.

        ``mode``: True / 1.0 = every block, a float in (0, 1) = that share of the blocks (evenly spaced:
        memory and recompute time both scale with it), False / 0 = off.
        """
        share = float(mode)
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"lean must be a share of blocks in [0, 1] (or true/false), got {mode!r}")
        self.lean = share
        return self

    def _lean_blocks(self) -> frozenset:
        depth = self.backbone.layout.depth
        return frozenset(i for i in range(depth) if int((i + 1) * self.lean) > int(i * self.lean))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the backbone's forward_features output with prompts stripped."""
        if not self.backbone.supports_tokens:
            if self.prompt is not None:
                x = self.prompt.pixels(x)
            with torch.set_grad_enabled(self.autograd_from(x) < NEVER):
                return self.backbone.forward_features(x)
        h, _, _ = self._encode(x)
        return self.backbone.finish(h)

    def pool_features(self, feats: torch.Tensor) -> torch.Tensor:
        pool = self.head_config.pool
        if pool == "backbone":
            return self.backbone.pool(feats)
        if pool == "none":  # timm's global_pool '': every token (prompts already stripped) or the feature map
            return self.backbone.unpooled(feats)
        if pool == "cls":
            return feats[:, 0]
        return feats[:, self.backbone.layout.num_prefix:].mean(dim=1)  # avg over image tokens only

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool_features(feats)
        return pooled if pre_logits or self.head is None else self.head(pooled)

    def reads_prefix_only(self) -> bool:
        """True when the head sees nothing but the prefix tokens (class-token pooling)."""
        pool = self.head_config.pool
        return (self.backbone.supports_tokens and
                (pool == "cls" or (pool == "backbone" and self.backbone.pool_reads_prefix_only())))

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """What ``forward_head`` needs from images: ``forward_features``, except that when the head reads only
        the prefix (class) tokens, the last block computes those alone and only they come out."""
        if self.fast and self.reads_prefix_only():
            h, _, _ = self._encode(x, last_queries=self.backbone.layout.num_prefix)
            return self.backbone.finish(h)
        return self.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.head_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Union[None, int, Sequence[int]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              output_dict: bool = False, attn_mask: Optional[torch.Tensor] = None):
        """timm's ``forward_intermediates`` (same signature and outputs) with prompt tokens stripped.
        ``attn_mask``: over the library's [prefix | patches] sequence (bool or additive, as timm's); prompt
        tokens attend and are attended freely."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be NCHW or NLC, got {output_fmt!r}")
        bb = self.backbone
        if bb.token_refusal is not None:
            if (not hasattr(bb, "forward_intermediates") or output_fmt != "NCHW" or not intermediates_only
                    or output_dict or norm):
                raise BackboneError(f"forward_intermediates needs a token backbone: {bb.token_refusal} (a timm CNN "
                                    f"gives its feature maps with output_fmt='NCHW', intermediates_only=True and "
                                    f"neither norm nor output_dict)")
            if self.prompt is not None:  # pixel prompts only (check_prompt refused the rest)
                x = self.prompt.pixels(x)
            with torch.set_grad_enabled(self.autograd_from(x) < NEVER):
                return bb.forward_intermediates(x, take_indices(len(bb.feature_info()), indices)[0], stop_early)
        take, max_index = take_indices(bb.layout.depth, indices)
        h, inter, ctx = self._encode(x, take=take, stop=max_index if stop_early else None, attn_mask=attn_mask)
        if norm:
            inter = [bb.finish(y) for y in inter]
        k = bb.layout.num_prefix
        prefix = [y[:, :k] for y in inter] if k else None
        inter = [y[:, k:] for y in inter]  # (B, N, D)
        if output_fmt == "NCHW":
            gh, gw = ctx.grid
            inter = [y.reshape(y.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous() for y in inter]  # (B, D, gh, gw)
        if output_dict:
            out: Dict[str, Any] = {"image_intermediates": inter}
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = bb.finish(h)
            return out
        if return_prefix_tokens and prefix is not None:
            inter = list(zip(inter, prefix))
        if intermediates_only:
            return inter
        return bb.finish(h), inter

    # --- configs and artifacts --------------------------------------------------------------------
    def to_config(self) -> Dict[str, Any]:
        return {
            "model_type": self.model_type,
            "backbone": self.backbone.identity(),
            "prompt": prompt_to_dict(self.prompt_config) if self.prompt_config is not None else None,
            "head": to_dict(self.head_config),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "train_backbone": self.train_backbone,
            "preprocessing": to_dict(self.data_config),
            **({"method": to_dict(self.method_config)} if self.method_config is not None else {}),
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any], backbone: BackboneAdapter) -> "PromptedModel":
        return cls(backbone, prompt=config.get("prompt"), num_classes=config.get("num_classes", 0),
                   head=config.get("head"), class_names=config.get("class_names"),
                   train_backbone=config.get("train_backbone", False), method=config.get("method"))


MODEL_TYPES.register("classifier")(PromptedModel)


def create_model(backbone: Union[str, BackboneConfig, Dict[str, Any], BackboneAdapter], prompt: Any = None,
                 num_classes: int = 0, head: Union[str, Dict[str, Any], HeadConfig, None] = None,
                 class_names: Optional[List[str]] = None, train_backbone: bool = False, method: Any = None,
                 **backbone_kwargs: Any) -> PromptedModel:
    """Build a prompted model.

    Args:
        backbone: ``'timm:ARCH[.TAG]'``, ``'open_clip:ARCH/TAG'``, ``'vpt:NAME'``, a BackboneConfig / dict,
            an adapter from :func:`vpt.backbones.create_backbone`, or a timm / open_clip model already in memory
            (used as is, frozen; then ``name=`` / ``model_kwargs=`` may say what it is: see
            :func:`vpt.backbones.wrap_module`; its artifact loads with ``backbone=`` the same module).
        prompt: a kind name (``'vpt_deep'``), ``{'kind': 'vpt_deep', 'num_tokens': 10}`` or a config object;
            None for a linear probe or full fine-tuning.
        num_classes: classes of the head (0: no head, features only).
        head: ``'linear'``, ``'mlp'`` or a head config dict (``kind``, ``pool``, ...).
        train_backbone: unfreeze the backbone (full fine-tuning baseline).
        method: a vision PEFT method (``'ssf'``, ``{'kind': 'adaptformer', 'bottleneck': 16}``; vpt.methods).
        **backbone_kwargs: ``weights=PATH``, ``pretrained=False``, ``init_seed``, ``model_kwargs={...}``.
    """
    if isinstance(backbone, torch.nn.Module) and not isinstance(backbone, BackboneAdapter):
        from .backbones import wrap_module  # a timm / open_clip model built by the caller's code, used as is
        backbone = wrap_module(backbone, **backbone_kwargs)
    elif not isinstance(backbone, BackboneAdapter):
        backbone = create_backbone(backbone, **backbone_kwargs)
    elif backbone_kwargs:
        raise TypeError(f"backbone options {sorted(backbone_kwargs)} given with an already built backbone")
    return PromptedModel(backbone, prompt=prompt, num_classes=num_classes, head=head, class_names=class_names,
                         train_backbone=train_backbone, method=method)
