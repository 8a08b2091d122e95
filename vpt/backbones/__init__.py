"""Backbone adapters. The only package that imports timm / open_clip.

Names: ``timm:ARCH[.TAG]`` (e.g. ``timm:vit_base_patch16_224.augreg2_in21k_ft_in1k``),
``open_clip:ARCH[/TAG]`` (e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``), and ``vpt:NAME`` for the
weights that ship with vpt. ``weights=`` loads a local file instead of the hub tag;
``pretrained=False`` gives a seeded random init (tests, random-init controls).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Mapping, Union

import torch

from ..config import from_dict
from ..registry import BACKBONES, did_you_mean
from .base import (BackboneAdapter, BackboneConfig, BackboneError, DataConfig, EmbedContext, TokenLayout,
                   load_state_dict_file)

_logger = logging.getLogger(__name__)

__all__ = ["BackboneAdapter", "BackboneConfig", "BackboneError", "DataConfig", "EmbedContext", "TokenLayout",
           "create_backbone", "list_families"]

_OFFLINE_HINT = ("could not fetch weights for '{name}' ({err}). If this machine is offline, download the "
                 "weights elsewhere and pass the local file with --weights PATH (weights=PATH in Python), "
                 "or use pretrained=False for a random init")


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _is_network_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("offline", "connection", "resolve", "network", "hub", "http", "timed out",
                                   "localentrynotfound", "cannot find the requested files"))


@BACKBONES.register("timm", help="timm VisionTransformer and Eva families (token, prefix, pixel prompts); "
                                 "any other timm model (pixel prompts only)")
def create_timm(cfg: BackboneConfig) -> BackboneAdapter:
    import timm
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    from .timm_eva import TimmEvaAdapter
    from .timm_generic import TimmGenericAdapter
    from .timm_vit import TimmViTAdapter

    spec = cfg.name.split(":", 1)[1]
    arch, _, tag = spec.partition(".")
    if not timm.is_model(arch):
        close = did_you_mean(arch, timm.list_models())
        raise BackboneError(f"unknown timm architecture '{arch}'{close or '; see timm.list_models()'}")
    kwargs = dict(cfg.model_kwargs)
    if cfg.weights:
        with _seeded(cfg.init_seed):
            model = timm.create_model(arch, pretrained=False, **kwargs)
        sd = load_state_dict_file(cfg.weights)
        _load_matching(model, sd, cfg)
    elif not cfg.pretrained:
        with _seeded(cfg.init_seed):
            model = timm.create_model(arch, pretrained=False, **kwargs)
    else:
        try:
            model = timm.create_model(spec, pretrained=True, **kwargs)
        except Exception as e:
            if _is_network_error(e):
                raise BackboneError(_OFFLINE_HINT.format(name=cfg.name, err=e)) from None
            raise
    model.reset_classifier(0)
    model.eval()
    if isinstance(model, Eva):
        return TimmEvaAdapter(model, cfg, arch, tag or None)
    if isinstance(model, VisionTransformer):
        return TimmViTAdapter(model, cfg, arch, tag or None)
    return TimmGenericAdapter(model, cfg, arch, tag or None)


def _load_matching(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], cfg: BackboneConfig) -> None:
    """Load a full state dict; a classifier that doesn't fit is dropped, anything else is an error."""
    own = model.state_dict()
    head_keys = {k for k in sd if k.startswith(("head.", "fc.", "classifier.", "head_dist."))}
    drop = {k for k in head_keys if k not in own or own[k].shape != sd[k].shape}
    sd = {k: v for k, v in sd.items() if k not in drop}
    missing = [k for k in own if k not in sd and k not in drop and not k.startswith(("head", "fc.", "classifier"))]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes ({few(wrong)})")
        raise BackboneError(
            f"weights file {cfg.weights!r} does not fit '{cfg.name}' with model_kwargs={dict(cfg.model_kwargs)}: "
            f"{'; '.join(parts)}. Pass the architecture (and model_kwargs) the file was made for.")
    model.load_state_dict(sd, strict=False)


@BACKBONES.register("open_clip", help="open_clip CLIP models with a ViT image tower (token, prefix, pixel prompts)")
def create_open_clip(cfg: BackboneConfig) -> BackboneAdapter:
    try:
        import open_clip
    except ImportError:
        raise ImportError("open_clip backbones need open_clip_torch: pip install 'vpt[clip]'") from None
    from .open_clip_vit import OpenClipViTAdapter

    spec = cfg.name.split(":", 1)[1]
    arch, _, tag = spec.partition("/")
    known = open_clip.list_models()
    if arch not in known:
        import difflib
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
        hint = f"; close ones: {', '.join(close)}" if close else ""
        raise BackboneError(f"unknown open_clip architecture '{arch}'{hint}; see open_clip.list_models()")
    kwargs = dict(cfg.model_kwargs)
    if cfg.weights:
        pretrained = cfg.weights
    elif not cfg.pretrained:
        pretrained = None
    else:
        pretrained = tag or None
        if pretrained is None:
            raise BackboneError(f"'{cfg.name}' names no weights tag; use open_clip:{arch}/TAG "
                                f"(tags: {', '.join(t for a, t in open_clip.list_pretrained() if a == arch) or 'none'}), "
                                f"weights=FILE, or pretrained=False")
    with _seeded(cfg.init_seed):
        try:
            # device: the current default (the meta device while vpt.artifact measures a model's size)
            model = open_clip.create_model(arch, pretrained=pretrained, device=torch.get_default_device(), **kwargs)
        except Exception as e:
            if cfg.weights and isinstance(e, (RuntimeError, KeyError)):
                raise BackboneError(f"weights file {cfg.weights!r} does not fit open_clip '{arch}' with "
                                    f"model_kwargs={kwargs}: {str(e).splitlines()[0][:300]}") from None
            if not cfg.weights and pretrained and _is_network_error(e):
                raise BackboneError(_OFFLINE_HINT.format(name=cfg.name, err=e)) from None
            raise
    model.eval()
    pp = getattr(model.visual, "preprocess_cfg", None) or {}
    return OpenClipViTAdapter(model, cfg, arch, tag or None, preprocess_cfg=pp)


def create_backbone(config: Union[str, BackboneConfig, Mapping[str, Any]], **overrides) -> BackboneAdapter:
    """Build an adapter from ``'timm:...'`` / ``'open_clip:...'`` / ``'vpt:...'`` or a BackboneConfig."""
    if isinstance(config, str):
        config = BackboneConfig(name=config)
    cfg = from_dict(BackboneConfig, config, where="backbone") if not isinstance(config, BackboneConfig) else config
    if overrides:
        from dataclasses import replace
        cfg = replace(cfg, **overrides)
    library, sep, rest = cfg.name.partition(":")
    if not sep or not rest:
        raise BackboneError(f"backbone name '{cfg.name}' needs a library prefix: one of "
                            f"{', '.join(n + ':' for n in BACKBONES.names())} (e.g. timm:vit_base_patch16_224)")
    try:
        entry = BACKBONES.get(library)
    except KeyError as e:
        raise BackboneError(str(e.args[0])) from None
    adapter = entry.factory(cfg)
    for p in adapter.parameters():
        p.requires_grad_(False)
    return adapter


def list_families() -> Dict[str, str]:
    return {e.name: e.help for e in BACKBONES}
