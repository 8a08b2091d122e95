"""PromptedCLIP: visual prompts inside a frozen open_clip image encoder, classified by CLIP's text side.

Heads (``head.kind``):
- ``zeroshot``: the frozen zero-shot text classifier (templates x class names), logits =
  ``logit_scale * normalize(image) @ classifier.T`` (Bahng et al. 2022, "Exploring Visual Prompts for
  Adapting Large-Scale Models", train only the pixel prompt through frozen CLIP).
- ``linear_init``: a trainable Linear initialised from that classifier (weight = scale * classifier,
  bias 0), so step-0 logits are bit-identical to zero-shot (WiSE-FT / FLYP-style head init).
- ``linear``: a randomly initialised Linear over the normalised image embedding (a CLIP linear probe).

Learnable text context (``text``: CoOp, ``vpt.prompts.text``) replaces the templates: the classifier is
recomputed from the context through the frozen text encoder; combinable with any visual prompt.

PromptedCLIP answers like ``open_clip.CLIP`` (``model(image, text)`` with ``output_dict``, ``logit_scale`` /
``logit_bias``, ``encode_image`` / ``encode_text(normalize=)``, a ``.visual`` with the prompts inside,
``open_clip.get_model_preprocess_cfg``), so open_clip's training step (ClipLoss / SigLipLoss), its zero-shot
evaluation and CLIP_benchmark's ``evaluate`` run on the prompted model unchanged. ``encode_text`` is the
frozen text tower (a learned CoOp context replaces templates, it does not rewrite arbitrary text).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneAdapter, BackboneConfig, create_backbone
from .backbones.base import DataConfig
from .config import TEXT_SECTION, Checked, ConfigError, FieldError, from_dict, one_of, option, to_dict
from .data.benchmarks import COOP_ZEROSHOT_TEMPLATES, KGCOOP_TEMPLATES
from .model import AdapterMixin, PromptedModel
from .prompts import prompt_to_dict
from .prompts.text import ClipStep, TextContext, TextSide, resolve_text_config, text_config_to_dict
from .registry import MODEL_TYPES, PROMPTS
from .zeroshot import TEMPLATE_SETS, clip_tokenizer, load_templates, prompt_name, text_classifier

_logger = logging.getLogger(__name__)

HEAD_KINDS = ("zeroshot", "linear_init", "linear")


@dataclass
class ClipHeadConfig(Checked):
    kind: str = option("zeroshot", "zeroshot (frozen text classifier) | linear_init (Linear from it) | linear "
                                   "(random)", choices=HEAD_KINDS)
    templates: Union[str, List[str]] = option("openai", "openai | simple | a file of '{c}' lines | a list of "
                                                        "'{c}' strings")
    logit_scale: Optional[float] = option(None, "multiplier of the cosine logits (null: the CLIP model's "
                                                "exp(logit_scale))", range=(-1e4, 1e4))
    classes_per_batch: int = option(10, "classes per text-encoder batch when building the classifier",
                                    range=(1, 100_000))


@dataclass
class ClipSections:
    """What a CLIP artifact and a recipe's model section hold besides backbone, image prompt and classes."""
    head: ClipHeadConfig = option(default_factory=ClipHeadConfig, help="the classifier over class names")
    text: Optional[Any] = one_of(TEXT_SECTION, help="learnable text context: {kind: coop | cocoop | kgcoop | "
                                                    "maple | promptsrc, ...}; null: hand-written templates")
    train_backbone: bool = option(False, "unfreeze the image tower (full fine-tuning baseline)")
    preprocessing: DataConfig = option(default_factory=DataConfig, help="the input the image tower expects")

    @staticmethod
    def check_artifact(config: Mapping[str, Any]) -> None:
        """An artifact stores its templates, never a file name (an artifact is data, not a path to read)."""
        templates = (config.get("head") or {}).get("templates", "openai")
        if isinstance(templates, str) and templates not in TEMPLATE_SETS:
            raise FieldError("head.templates", f" {templates[:80]!r} is not a template set "
                                               f"({', '.join(TEMPLATE_SETS)}); an artifact stores its templates as a "
                                               f"list of strings, never a file name")


def reference_prompt(model: Mapping[str, Any], dataset: str) -> Optional[Tuple[str, List[str]]]:
    """The hand-crafted prompt the paper's code uses on CoOp's ``dataset`` (Dassl's name) for a recipe's model
    section (the raw mapping, before typing), as (field under ``model``, templates): KgCoOp's ``text.templates``
    (its per-dataset table) or, for zero-shot CLIP (nothing trained), ``head.templates`` (CoOp's ZeroshotCLIP
    table). None when the section sets that field itself (the documented opt-out), when ``dataset`` is not one of
    CoOp's, or when the method uses no per-dataset hand-crafted text (CoOp, CoCoOp, MaPLe, PromptSRC)."""
    if not isinstance(model, Mapping) or model.get("type") != "clip" or dataset not in COOP_ZEROSHOT_TEMPLATES:
        return None
    text, head = model.get("text"), model.get("head")
    if text is not None:
        if isinstance(text, Mapping) and text.get("kind") == "kgcoop" and "templates" not in text:
            return "text.templates", [KGCOOP_TEMPLATES[dataset]]
        return None
    zero_shot = (isinstance(head, Mapping) and head.get("kind", "zeroshot") == "zeroshot" and "templates" not in head
                 and all(model.get(k) is None for k in ("prompt", "method")) and not model.get("train_backbone"))
    return ("head.templates", [COOP_ZEROSHOT_TEMPLATES[dataset]]) if zero_shot else None


class ClipHead(nn.Module):
    """Logits = ``normalize(image_embedding) @ weight.T (+ bias)``; ``weight`` frozen for zeroshot."""

    def __init__(self, weight: torch.Tensor, trainable: bool):
        super().__init__()
        if trainable:
            self.weight = nn.Parameter(weight.clone())  # (C, D)
            self.bias = nn.Parameter(torch.zeros(weight.shape[0]))  # (C,)
        else:
            self.register_buffer("weight", weight.clone(), persistent=False)  # rebuilt from the text tower on load
            self.bias = None

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(image_features, dim=-1), self.weight.to(image_features.dtype),
                        None if self.bias is None else self.bias.to(image_features.dtype))


class PromptedImageTower(PromptedModel):
    """The prompted image encoder of a PromptedCLIP (its ``.visual``): images (B, C, H, W) -> projected image
    embeddings (B, E), the prompts inside, like open_clip's ``model.visual``. It registers the image tower
    only (the text tower is a sibling), and answers open_clip's ``preprocess_cfg`` / ``image_size`` /
    ``output_dim`` / ``image_mean`` / ``image_std``."""

    def __init__(self, backbone: BackboneAdapter, prompt: Any = None, train_backbone: bool = False):
        super().__init__(backbone.image_tower(), prompt=prompt, num_classes=0, head={"kind": "linear", "pool": "backbone"},
                         train_backbone=train_backbone)

    @property
    def preprocess_cfg(self) -> Dict[str, Any]:
        own = getattr(self.backbone.visual, "preprocess_cfg", None)
        if own:
            return own
        d = self.data_config
        return {"size": tuple(d.input_size[1:]), "mean": d.mean, "std": d.std, "interpolation": d.interpolation}

    @property
    def image_size(self):
        return self.backbone.visual.image_size

    @property
    def output_dim(self) -> int:
        return self.backbone.num_features

    @property
    def image_mean(self):
        return self.preprocess_cfg.get("mean", self.data_config.mean)

    @property
    def image_std(self):
        return self.preprocess_cfg.get("std", self.data_config.std)


class PromptedCLIP(AdapterMixin, nn.Module):
    """Frozen open_clip model with visual prompts, answering like ``open_clip.CLIP``, plus a classifier.

    Composition (all modules shared with the wrapped open_clip model, nothing copied):

    - ``visual``: :class:`PromptedImageTower`, images -> embeddings with the prompts inside;
    - ``text``: open_clip's text tower (``encode_text``); ``text_prompt``: an optional CoOp context;
    - ``logit_scale`` / ``logit_bias``: the model's own parameters;
    - ``head``: the classifier over class names (zeroshot / linear_init / linear; none with ``text_prompt``);
    - ``backbone``: the adapter holding the whole frozen open_clip model, and ``prompt`` = ``visual.prompt``
      (registered first, so parameter and artifact names stay ``backbone.model.*`` and ``prompt.*``).

    Calls:

    - ``model(images)`` (positional, no text): class logits (B, C): what vpt's trainer and evaluation use;
    - ``model(images, texts)``, ``model(image=..., text=...)``: open_clip's outputs, a dict when
      ``output_dict`` is set, else ``(image_features, text_features, logit_scale.exp()[, logit_bias])``, so
      open_clip's training step (ClipLoss / SigLipLoss) and its zero-shot evaluation run unchanged;
    - ``encode_image`` / ``encode_text`` / ``get_logits`` as open_clip's.
    """

    model_type = "clip"
    task = "clip"  # the vpt task that evaluates / predicts its artifacts (vpt.Artifact.task)
    config_sections = ClipSections  # the artifact sections this model type adds (vpt.schema)

    def __init__(self, backbone: BackboneAdapter, class_names: Sequence[str], prompt: Any = None,
                 head: Union[str, Mapping[str, Any], ClipHeadConfig, None] = None,
                 text: Union[None, Mapping[str, Any]] = None, train_backbone: bool = False,
                 init_head: bool = True):
        super().__init__()
        if getattr(backbone, "library", None) != "open_clip":
            raise ConfigError(f"model type 'clip' needs an open_clip backbone (open_clip:ARCH/TAG), got "
                              f"'{backbone.config.name}'; use model type 'classifier' for other backbones")
        if not class_names:
            raise ConfigError("a CLIP classifier needs class names (they are what the text side encodes)")
        backbone = backbone.full_adapter
        visual = PromptedImageTower(backbone, prompt=prompt, train_backbone=train_backbone)
        self.backbone = backbone
        self.prompt = visual.prompt
        self.visual = visual
        self.text = backbone.text_tower()
        self.train_backbone = bool(train_backbone)
        self.prompt_config = visual.prompt_config
        self.data_config = visual.data_config
        self.output_dict = bool(getattr(backbone.model, "output_dict", False))  # open_clip's flag (forward's shape)
        self.class_names = [str(c) for c in class_names]
        self.num_classes = len(self.class_names)
        if isinstance(head, str):
            head = {"kind": head}
        self.clip_head_config = from_dict(ClipHeadConfig, head or {}, where="head")
        hc = self.clip_head_config
        self.text_config = resolve_text_config(text)
        if self.text_config is not None and hc.kind != "zeroshot":
            raise ConfigError(f"learnable text context computes the classifier itself; it needs head.kind "
                              f"zeroshot, not {hc.kind!r} (drop `text` to train a linear head)")
        self.templates = load_templates(hc.templates) if self.text_config is None and hc.kind != "linear" else []
        for p in backbone.parameters():  # full fine-tuning means the image tower (visual set it); the rest stays frozen
            p.requires_grad_(False)
        for p in visual.backbone.parameters():
            p.requires_grad_(self.train_backbone)
        scale = hc.logit_scale if hc.logit_scale is not None else float(backbone.model.logit_scale.exp())
        self.logit_scale_value = float(scale)
        self._tokenizer = None
        self.text_prompt: Optional[TextContext] = None
        self._text_cache = None
        self._frozen_text: Dict[Any, torch.Tensor] = {}
        self._aux: Optional[torch.Tensor] = None
        self.head: Optional[ClipHead] = None
        if self.text_config is not None:
            self._build_text_prompt(prompt)
        elif hc.kind == "linear":
            weight = torch.empty(self.num_classes, backbone.num_features)
            nn.init.trunc_normal_(weight, std=0.01)
            self.head = ClipHead(weight, trainable=True)
        else:
            if init_head or hc.kind == "zeroshot":
                clf = self.zeroshot_classifier()  # (C, D) unit rows
            else:  # the artifact's trained weight overwrites it: skip the text encoder
                clf = torch.zeros(self.num_classes, backbone.num_features)
            self.head = ClipHead(self.logit_scale_value * clf, trainable=hc.kind == "linear_init")
        self.train(False)

    # --- modes ------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # the text tower and everything frozen: no dropout noise
        self.visual.train(mode)  # the image tower trains only with train_backbone (PromptedModel.train)
        return self

    @property
    def fast(self) -> bool:
        return self.visual.fast

    @fast.setter
    def fast(self, value: bool) -> None:
        self.visual.fast = bool(value)

    def set_lean(self, mode: Union[bool, float] = True) -> "PromptedCLIP":
        self.visual.set_lean(mode)
        return self

    # --- the text side ----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """open_clip's tokenizer for this architecture (CLIP_benchmark's ``tokenizer`` argument)."""
        if self._tokenizer is None:
            self._tokenizer = clip_tokenizer(self.backbone)
        return self._tokenizer

    def zeroshot_classifier(self, cache_dir: Optional[str] = None) -> torch.Tensor:
        """(C, D) unit-norm text classifier of the head's templates (open_clip's builder)."""
        hc = self.clip_head_config
        return text_classifier(self.backbone, [prompt_name(c) for c in self.class_names],
                               self.templates or load_templates(hc.templates), tokenizer=self.tokenizer,
                               classes_per_batch=hc.classes_per_batch, cache_dir=cache_dir)

    def _build_text_prompt(self, prompt: Any) -> None:
        """The text prompt of ``model.text`` (CoOp or its family); methods that prompt the image encoder
        too (MaPLe, PromptSRC) bring their own image prompt, installed as ``visual.prompt``."""
        bb, text = self.backbone, self.text
        side = TextSide(token_embedding=text.pieces.token_embedding, tokenizer=self.tokenizer,
                        class_names=[prompt_name(c) for c in self.class_names], text_depth=text.depth,
                        text_width=text.width, image_dim=int(bb.num_features),
                        vision_layout=bb.layout if bb.token_refusal is None else None,
                        vision_ln_pre=getattr(getattr(bb, "visual", None), "ln_pre", None))
        self.text_prompt = PROMPTS.get(self.text_config.kind).factory(self.text_config, None, None, side=side)
        vision = self.text_prompt.vision_prompt()
        if vision is not None:
            if prompt is not None:
                raise ConfigError(f"text kind {self.text_config.kind!r} drives the image-encoder prompts itself; "
                                  f"drop model.prompt (got {prompt!r})")
            self.visual.backbone.check_prompt(vision.kind, "tokens")
            self.visual.prompt = vision  # holds no tensors: the text prompt owns them (saved once)
            self.prompt = vision

    def _encode_prompts(self, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, W) prompt embeddings -> (N, E) with the text prompt's deep prompts (not normalised)."""
        return self.text.encode_embeddings(emb, tokens, self.text_prompt.deep_text_prompts())

    def text_features(self) -> torch.Tensor:
        """(C, E) unit-norm class embeddings from the learnable text prompt (CoOp and its family)."""
        tp = self.text_prompt
        if tp.per_image:
            raise ConfigError(f"text kind {tp.kind!r} has per-image class embeddings; call "
                              f"text_prompt.image_logits(image_features, ...) instead of text_features()")
        cached = not torch.is_grad_enabled() and not self.training  # eval: the prompts are fixed, encode once
        if cached:
            key = tuple((p.data_ptr(), p._version, p.device) for p in tp.parameters())
            if self._text_cache is not None and self._text_cache[0] == key:
                return self._text_cache[1]
        feats = F.normalize(self._encode_prompts(tp(), tp.tokens), dim=-1)
        if cached:
            self._text_cache = (key, feats)
        return feats

    @torch.no_grad()
    def frozen_text_features(self, templates: Union[str, Sequence[str]]) -> torch.Tensor:
        """(C, E) unit-norm class embeddings of the frozen text tower: the mean over ``templates`` (a set name,
        a file or a list of '{c}' strings) of the raw embeddings, normalised (PromptSRC / KgCoOp's
        hand-crafted features). Cached per template list."""
        device = self.logit_scale.device
        key = (templates if isinstance(templates, str) else tuple(templates), device)
        if key not in self._frozen_text:
            templates = load_templates(templates)
            names = [prompt_name(c) for c in self.class_names]
            with torch.autocast(device.type, enabled=False):
                total = 0
                for t in templates:
                    tokens = self.tokenizer([t.format(c=n) for n in names]).to(device)  # (C, L)
                    total = total + self.text(tokens).float()  # (C, E)
            self._frozen_text[key] = F.normalize(total / len(templates), dim=-1)
        return self._frozen_text[key]

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, E) unit-norm embeddings of the frozen, unprompted image tower (open_clip's encode_image)."""
        return self.backbone.model.encode_image(images, normalize=True)

    # --- open_clip's CLIP interface ---------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The prompted image encoder: the projected image embedding (B, E), as open_clip's."""
        feats = self.visual(image)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The frozen open_clip text encoder (a CoOp context replaces templates; it does not rewrite text)."""
        return self.text(text, normalize=normalize)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.backbone.model.logit_scale

    @property
    def logit_bias(self) -> Optional[nn.Parameter]:
        return getattr(self.backbone.model, "logit_bias", None)

    @property
    def context_length(self) -> Optional[int]:
        return self.text.context_length

    @property
    def vocab_size(self) -> Optional[int]:
        return self.text.vocab_size

    # --- open_clip's training switches (open_clip_train calls them) ----------------------------------
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False, *,
                         train_prompts: bool = True) -> None:
        """LiT's lock, as ``open_clip.CLIP.lock_image_tower`` (it runs open_clip's own ``visual.lock``): every
        image-tower parameter is frozen except those of the last ``unlocked_groups`` groups (open_clip's
        grouping: the stem, each block, the last block with ``ln_post``, the projection); ``freeze_bn_stats``
        as open_clip. The visual prompts are not part of the tower: they stay trainable, unless
        ``train_prompts=False`` freezes them too. Unlocking every group is full fine-tuning
        (``train_backbone``); a model with some groups unlocked trains, but its artifact can't describe it
        (``save_pretrained`` says so)."""
        self.backbone.model.lock_image_tower(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)
        tower = [p for p in self.visual.backbone.parameters()]
        self.train_backbone = self.visual.train_backbone = bool(tower) and all(p.requires_grad for p in tower)
        self._prompts_trainable([self.visual.prompt], train_prompts)
        self.train(self.training)  # a tower that trains again leaves eval() with the model (train_backbone)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True, *,
                        train_prompts: bool = True) -> None:
        """As ``open_clip.CLIP.lock_text_tower`` (open_clip's own, its checks included: a CLIP refuses
        ``freeze_layer_norm=False``): the text tower's parameters are frozen except its last
        ``unlocked_layers`` layers. A learned text context (CoOp and its family) is not part of the tower: it
        stays trainable, unless ``train_prompts=False`` freezes it too."""
        self.backbone.model.lock_text_tower(unlocked_layers=unlocked_layers, freeze_layer_norm=freeze_layer_norm)
        self._prompts_trainable([self.text_prompt], train_prompts)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As ``open_clip.CLIP.set_grad_checkpointing``: recompute activations in backward, in both towers.
        The prompted image loop is vpt's (its lean mode on every block, ``visual.set_grad_checkpointing``),
        the text tower open_clip's flag (honoured by ``encode_text`` and by the learned text context)."""
        self.backbone.model.set_grad_checkpointing(enable)
        self.visual.set_grad_checkpointing(enable)

    @property
    def grad_checkpointing(self) -> bool:
        return self.visual.grad_checkpointing

    @staticmethod
    def _prompts_trainable(modules: Sequence[Optional[nn.Module]], trainable: bool) -> None:
        for m in modules:
            if m is not None:
                for p in m.parameters():
                    p.requires_grad_(bool(trainable))

    def save_pretrained(self, save_directory: str) -> None:
        """The artifact (``vpt.artifact.save_pretrained``); refused, naming the tensors, when a partial
        ``lock_image_tower`` / ``lock_text_tower`` left backbone tensors trainable that it can't describe."""
        from .errors import ArtifactError
        described = {id(p) for p in self.visual.backbone.parameters()} if self.train_backbone else set()
        extra = [n for n, p in self.named_parameters()
                 if p.requires_grad and n.startswith("backbone.") and id(p) not in described]
        if extra:
            raise ArtifactError(f"refusing to save {save_directory!r}: {len(extra)} backbone tensor(s) are trainable "
                                f"({', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}) after a partial "
                                f"lock_image_tower / lock_text_tower, and a vpt artifact stores prompts, heads or "
                                f"the whole image tower only; lock the towers fully (unlocked_groups=0, "
                                f"unlocked_layers=0) or unlock every image group (full fine-tuning), or save the "
                                f"weights yourself (safetensors.torch.save_file(model.state_dict(), PATH))")
        super().save_pretrained(save_directory)

    def get_logits(self, image: torch.Tensor, text: torch.Tensor):
        """(image_logits (B, T), text_logits (T, B)) as open_clip's ``CLIP.get_logits``."""
        image_logits = self.logit_scale.exp() * self.encode_image(image, normalize=True) @ \
            self.encode_text(text, normalize=True).T  # (B, T)
        if self.logit_bias is not None:
            image_logits = image_logits + self.logit_bias
        return image_logits, image_logits.T

    def forward(self, x: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None, *,
                image: Optional[torch.Tensor] = None):
        """``model(images)``: class logits (B, C). ``model(images, texts)`` / ``model(image=, text=)``:
        open_clip's CLIP outputs (see the class docstring)."""
        if x is not None and image is not None:
            raise TypeError("pass the images once: model(images) for class logits, or model(image=..., text=...)")
        if image is None and text is None and x is not None:
            return self._class_logits(x)
        image = x if image is None else image
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        scale, bias = self.logit_scale.exp(), self.logit_bias
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": scale}
            if bias is not None:
                out["logit_bias"] = bias
            return out
        if bias is not None:
            return image_features, text_features, scale, bias
        return image_features, text_features, scale

    # --- the classifier ---------------------------------------------------------------------------
    @property
    def grad_from(self) -> int:
        return self.visual.grad_from

    def _encode(self, *args, **kwargs):
        return self.visual._encode(*args, **kwargs)

    def reads_prefix_only(self) -> bool:
        return self.visual.reads_prefix_only()

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.head_features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.forward_features(x)

    def pool_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.visual.pool_features(feats)

    def _logits(self, pooled: torch.Tensor):
        """(B, E) projected image embedding -> ((B, C) logits, (C, E) class embeddings or None)."""
        if self.text_prompt is None:
            return self.head(pooled), None
        image = F.normalize(pooled, dim=-1)
        if self.text_prompt.per_image:
            return self.text_prompt.image_logits(image, self.logit_scale_value, self._encode_prompts), None
        text = self.text_features()  # (C, E)
        return F.linear(image, (self.logit_scale_value * text).to(pooled.dtype)), text

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool_features(feats)  # (B, E) projected image embedding
        return pooled if pre_logits else self._logits(pooled)[0]

    def _class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``model(images)``: (B, C) logits; a training step also records the text prompt's extra loss terms."""
        pooled = self.pool_features(self.head_features(x))  # (B, E)
        logits, text = self._logits(pooled)
        if self.training and torch.is_grad_enabled() and self.text_prompt is not None:
            step = ClipStep(image_features=F.normalize(pooled, dim=-1), text_features=text, logits=logits,
                            logit_scale=self.logit_scale_value,
                            frozen_image_features=lambda: self.frozen_image_features(x),
                            frozen_text_features=self.frozen_text_features)
            self._aux = self.text_prompt.auxiliary_loss(step)
        return logits

    # --- what the training loop asks of a text prompt ----------------------------------------------
    def auxiliary_loss(self) -> Optional[torch.Tensor]:
        aux, self._aux = self._aux, None
        return aux

    def end_epoch(self, epoch: int, epochs: int) -> None:
        if self.text_prompt is not None:
            self.text_prompt.end_epoch(epoch, epochs)

    def run_state(self) -> Dict[str, torch.Tensor]:
        return self.text_prompt.run_state() if self.text_prompt is not None else {}

    def load_run_state(self, state: Dict[str, torch.Tensor]) -> None:
        if self.text_prompt is not None:
            self.text_prompt.load_run_state(state)
        else:
            super().load_run_state(state)

    def for_classes(self, class_names: Sequence[str]) -> "PromptedCLIP":
        """The same learned prompts on other classes (base-to-novel, cross-dataset transfer): the text side
        is rebuilt for ``class_names`` on the same frozen backbone, the trained tensors are copied."""
        names = [str(c) for c in class_names]
        if not names:
            raise ConfigError("for_classes needs at least one class name")
        tc = self.text_config
        if tc is not None and tc.class_specific:
            raise ConfigError("a class-specific context (text.class_specific) has one context per trained class; "
                              "it does not transfer to other classes: train with class_specific: false")
        if tc is None and self.clip_head_config.kind != "zeroshot":
            raise ConfigError(f"head.kind {self.clip_head_config.kind!r} learned one weight row per trained class; "
                              f"only text-derived heads (zeroshot, CoOp and its family) transfer to other classes")
        config = self.to_config()
        config["class_names"] = names
        other = type(self).from_config(config, self.backbone)  # a zeroshot head is rebuilt for the new names
        mine = self.trainable_state_dict()
        with torch.no_grad():
            for n, p in other.named_parameters():
                if p.requires_grad:
                    p.copy_(mine[n])
        device = self.logit_scale.device
        return other.to(device).train(self.training)

    # --- configs and artifacts --------------------------------------------------------------------
    def role_modules(self) -> Dict[str, List[nn.Module]]:
        """The CoOp text context is a prompt too (``AdapterMixin.param_roles``)."""
        roles = super().role_modules()
        if self.text_prompt is not None:
            roles["prompt"] = roles["prompt"] + [self.text_prompt]
        return roles

    def to_config(self) -> Dict[str, Any]:
        head = to_dict(self.clip_head_config)
        head["templates"] = list(self.templates) if self.templates else head["templates"]  # self-contained
        head["logit_scale"] = self.logit_scale_value
        return {
            "model_type": self.model_type,
            "backbone": self.backbone.identity(),
            "prompt": prompt_to_dict(self.prompt_config) if self.prompt_config is not None else None,
            "head": head,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "train_backbone": self.train_backbone,
            "preprocessing": to_dict(self.data_config),
            "text": (text_config_to_dict(self.text_config, self.text_prompt.num_tokens)
                     if self.text_prompt is not None else None),
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any], backbone: BackboneAdapter) -> "PromptedCLIP":
        return cls(backbone, class_names=config.get("class_names") or [], prompt=config.get("prompt"),
                   head=config.get("head"), text=config.get("text"),
                   train_backbone=config.get("train_backbone", False), init_head=False)

    @classmethod
    def from_section(cls, section: Any, class_names: Sequence[str]) -> "PromptedCLIP":
        """Build from ``vpt train``'s model section (type, backbone, prompt, head, train_backbone, text)."""
        bb = section.backbone
        bb = bb if isinstance(bb, BackboneConfig) else from_dict(BackboneConfig, bb or {}, where="model.backbone")
        return cls(create_backbone(bb), class_names=class_names, prompt=section.prompt, head=section.head,
                   text=section.text, train_backbone=bool(section.train_backbone))


MODEL_TYPES.register("clip")(PromptedCLIP)


def create_clip_model(backbone: Union[str, BackboneConfig, Mapping[str, Any], BackboneAdapter],
                      class_names: Sequence[str], prompt: Any = None,
                      head: Union[str, Mapping[str, Any], None] = None, text: Optional[Mapping[str, Any]] = None,
                      train_backbone: bool = False, **backbone_kwargs: Any) -> PromptedCLIP:
    """Build a PromptedCLIP, e.g. ``create_clip_model('open_clip:ViT-B-32', names, prompt='pixel_pad',
    head='linear_init', weights='clip.safetensors')``; ``backbone`` may be an open_clip model already in memory
    (``create_clip_model(model, names, name='open_clip:ViT-B-16')``, see :func:`vpt.backbones.wrap_module`)."""
    if isinstance(backbone, torch.nn.Module) and not isinstance(backbone, BackboneAdapter):
        from .backbones import wrap_module  # a timm / open_clip model built by the caller's code, used as is
        backbone = wrap_module(backbone, **backbone_kwargs)
    elif not isinstance(backbone, BackboneAdapter):
        backbone = create_backbone(backbone, **backbone_kwargs)
    elif backbone_kwargs:
        raise TypeError(f"backbone options {sorted(backbone_kwargs)} given with an already built backbone")
    return PromptedCLIP(backbone, class_names, prompt=prompt, head=head, text=text, train_backbone=train_backbone)
