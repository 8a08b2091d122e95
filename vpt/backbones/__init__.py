"""Backbone adapters. The only package that imports timm / open_clip.

Names: ``timm:ARCH[.TAG]`` (e.g. ``timm:vit_base_patch16_224.augreg2_in21k_ft_in1k``),
``open_clip:ARCH[/TAG]`` (e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``), and ``vpt:NAME`` for the
weights that ship with vpt. ``weights=`` loads a local file instead of the hub tag;
``pretrained=False`` gives a seeded random init (tests, random-init controls).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Union

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
    return _timm_adapter(model, cfg, arch, tag or None)


def _timm_adapter(model, cfg: BackboneConfig, arch: str, tag: Optional[str]) -> BackboneAdapter:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    from .timm_eva import TimmEvaAdapter
    from .timm_generic import TimmGenericAdapter
    from .timm_vit import TimmViTAdapter
    model.reset_classifier(0)
    model.eval()
    if isinstance(model, Eva):
        return TimmEvaAdapter(model, cfg, arch, tag)
    if isinstance(model, VisionTransformer):
        return TimmViTAdapter(model, cfg, arch, tag)
    return TimmGenericAdapter(model, cfg, arch, tag)


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


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, in sorted order): which weights these are."""
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_KWARGS_HINT = ("pass model_kwargs= (the keyword arguments the module was built with) so that an artifact can "
                "describe it")


def _check_rebuilds(build: Callable[[], torch.nn.Module], module: torch.nn.Module, name: str,
                    kwargs: Dict[str, Any]) -> None:
    """The architecture ``name`` with ``kwargs``, built on the meta device, has the module's tensor shapes."""
    try:
        with torch.device("meta"):
            ref = build()
    except Exception as e:  # the library's own errors for bad kwargs
        raise BackboneError(f"cannot rebuild {name} with model_kwargs={kwargs} ({type(e).__name__}: {e}); "
                            f"{_KWARGS_HINT}") from None
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    other = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    head = ("head.", "fc.", "classifier.", "head_dist.")
    diff = sorted(k for k in set(own) ^ set(other) if not k.startswith(head)) + \
        sorted(k for k in set(own) & set(other) if own[k] != other[k] and not k.startswith(head))
    if diff:
        raise BackboneError(f"the module given as backbone is not {name} with model_kwargs={kwargs} (tensors differ: "
                            f"{', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); {_KWARGS_HINT}, and name= "
                            f"when it is not the architecture timm / open_clip records")


def wrap_module(module: torch.nn.Module, name: Optional[str] = None,
                model_kwargs: Optional[Mapping[str, Any]] = None) -> BackboneAdapter:
    """An adapter around a timm or open_clip model already in memory (weights loaded by the caller's own
    code), used as is: frozen, its classifier removed, not copied. Its identity records what rebuilds it: the
    name (timm: from the model's ``pretrained_cfg``; open_clip: pass ``name='open_clip:ARCH'``), the
    ``model_kwargs`` (checked by building the architecture on the meta device) and ``memory:<sha256>`` of its
    weights; an artifact of it loads with ``backbone=`` the same module (the hash is checked)."""
    kwargs = dict(model_kwargs or {})
    if isinstance(module, BackboneAdapter):
        raise BackboneError("the backbone is already a vpt adapter; pass it as backbone= directly")
    cfg_dict = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None)
    if name is None and isinstance(cfg_dict, Mapping) and cfg_dict.get("architecture"):
        name = "timm:" + str(cfg_dict["architecture"])  # no tag: the weights are the module's, not the hub's
    if name is None or ":" not in name:
        raise BackboneError(f"cannot tell which architecture this {type(module).__name__} is; pass name= (e.g. "
                            f"name='open_clip:ViT-B-32' or 'timm:vit_base_patch16_224') and model_kwargs= if it "
                            f"was built with any")
    library, _, spec = name.partition(":")
    cfg = BackboneConfig(name=name, pretrained=False, model_kwargs=kwargs)
    if library == "timm":
        import timm
        arch, _, tag = spec.partition(".")
        _check_rebuilds(lambda: timm.create_model(arch, pretrained=False, **kwargs), module, name, kwargs)
        adapter = _timm_adapter(module, cfg, arch, tag or None)
    elif library == "open_clip":
        import open_clip

        from .open_clip_vit import OpenClipViTAdapter
        arch, _, tag = spec.partition("/")
        if not hasattr(module, "visual") or not hasattr(module, "encode_text"):
            raise BackboneError(f"name {name!r} says open_clip, but {type(module).__name__} is not an open_clip "
                                f"CLIP model (no visual / encode_text)")
        _check_rebuilds(lambda: open_clip.create_model(arch, pretrained=None,
                                                               device=torch.get_default_device(), **kwargs), module, name,
                        kwargs)
        module.eval()
        adapter = OpenClipViTAdapter(module, cfg, arch, tag or None,
                                     preprocess_cfg=getattr(module.visual, "preprocess_cfg", None) or {})
    else:
        raise BackboneError(f"backbone modules in memory can be timm or open_clip models; {name!r} is neither")
    adapter._weights_id = "memory:" + state_sha256(module)
    for p in adapter.parameters():
        p.requires_grad_(False)
    return adapter


def list_families() -> Dict[str, str]:
    return {e.name: e.help for e in BACKBONES}
