"""peft's adapter format, read without building a model: the peft config classes (refused tuners named), peft's
saved tensor names, and an ``adapter_config.json`` that peft saved translated into the vpt config that loads
it. ``vpt.artifact`` reads peft-saved adapters through this module; the model (``model.type: peft``) is
``vpt.peft_model``. peft is an optional dependency (``pip install "vpt[peft]"``).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, List, Optional, Tuple

from .backbones import BackboneConfig
from .config import ConfigError
from .errors import ArtifactError

# the saved-name prefix of peft's PeftModel (what peft.PeftModel.save_pretrained writes)
PEFT_PREFIX = "base_model.model."
LEGACY_PREFIX = "backbone.model."  # vpt <= 0.x model.type lora artifacts

# peft types that do not inject into a vision backbone's layers, with the reason
REFUSED = {
    "PROMPT_TUNING": "prompt learning for language models (it needs a word embedding and a transformers "
                     "config); for image prompts use vpt's prompt kinds (model.type: classifier, model.prompt: "
                     "{kind: vpt_deep})",
    "P_TUNING": "prompt learning for language models; use vpt's prompt kinds (model.prompt)",
    "PREFIX_TUNING": "prefix tuning for transformers language models (past_key_values); use vpt's prompt kind "
                     "vpt_prefix (model.prompt: {kind: vpt_prefix})",
    "MULTITASK_PROMPT_TUNING": "prompt learning for language models; use vpt's prompt kinds (model.prompt)",
    "CPT": "context-aware prompt tuning for causal language models; use vpt's prompt kinds (model.prompt)",
    "CARTRIDGE": "a KV-cache prefix for causal language models; use vpt's prompt kind vpt_prefix",
    "ADAPTION_PROMPT": "LLaMA-style attention modules only; use vpt's prompt kinds (model.prompt)",
    "ADALORA": "AdaLoRA reallocates ranks from a training-loop hook (update_and_allocate, total_step) that vpt's "
               "engine does not call (peft documents it for its own trainers only); use peft_type LORA",
    "XLORA": "X-LoRA mixes adapters through a transformers model's hidden states; use peft_type LORA",
    "POLY": "Poly routes adapters by task_ids passed to forward; vpt's model takes images only",
    "TRAINABLE_TOKENS": "it trains rows of a word embedding, which an image backbone has not",
    "VERA": "VeRA's random projections are shared by all layers and kept on peft's tuner object, which peft's "
            "inject_adapter_in_model (how vpt puts a tuner on the backbone it owns) does not support; use LORA, "
            "LOHA, LOKR, OFT, BOFT, IA3, FOURIERFT, HRA or LN_TUNING",
}


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("model.type 'peft' needs peft: pip install peft (or pip install \"vpt[peft]\")") from None
    return peft


def peft_config_class(peft_type: Any, where: str = "model.peft"):
    """peft's config class for ``peft_type`` (its PeftType name, any case); refused types name the reason."""
    peft = _peft()
    if not isinstance(peft_type, str) or not peft_type:
        raise ConfigError(f"{where}.peft_type is required: one of {', '.join(supported_types())} (peft's names)")
    name = peft_type.upper().replace("-", "_")
    if name in REFUSED:
        raise ConfigError(f"{where}.peft_type {peft_type!r} cannot tune an image backbone: {REFUSED[name]}")
    mapping = {str(k.value): v for k, v in peft.PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    if name not in mapping:
        from .registry import did_you_mean
        raise ConfigError(f"{where}.peft_type {peft_type!r} is not a peft tuner of peft {peft.__version__}; one of "
                          f"{', '.join(supported_types())}{did_you_mean(name, mapping)}")
    return name, mapping[name]


def supported_types() -> List[str]:
    peft = _peft()
    return sorted(str(k.value) for k in peft.PEFT_TYPE_TO_CONFIG_MAPPING if str(k.value) not in REFUSED)


def _backbone_name(base: Optional[str]) -> Optional[str]:
    """peft's base_model_name_or_path -> a vpt backbone name: 'timm/ARCH.TAG' or 'hf-hub:timm/ARCH.TAG'
    (timm's hub ids), or a vpt name ('timm:ARCH', 'vpt:NAME')."""
    if not isinstance(base, str) or not base:
        return None
    if base.startswith(("timm:", "vpt:", "open_clip:")):
        return base
    m = re.fullmatch(r"(?:hf[-_]hub:)?timm/([A-Za-z0-9_.\-]+)", base)
    return f"timm:{m.group(1)}" if m else None


def vpt_config_from_peft(config: Dict[str, Any], directory: str, header: Dict[str, Tuple[Tuple[int, ...], str]],
                         backbone: Any = None) -> Dict[str, Any]:
    """An ``adapter_config.json`` that peft saved (``peft_type``, no vpt keys) -> the vpt config that loads it:
    model type ``peft`` on the backbone that ``base_model_name_or_path`` names (a timm hub id such as
    ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``, or a vpt backbone name), or the ``backbone`` the
    caller passes; the head is peft's ``modules_to_save`` head (``base_model.model.head.weight``)."""
    from .backbones import BackboneAdapter
    path = f"{directory}/adapter_config.json"
    if backbone is None:
        name = _backbone_name(config.get("base_model_name_or_path"))
        if name is None:
            raise ArtifactError(
                f"{path} was saved by peft for base model {config.get('base_model_name_or_path')!r}, which vpt cannot "
                f"rebuild; pass the backbone: vpt.from_pretrained(DIR, backbone='timm:ARCH.TAG'), or set "
                f"base_model_name_or_path in the file to the timm hub id (e.g. 'timm/vit_base_patch16_224.augreg_in21k')")
        bb = {"name": name}
        if name.startswith("vpt:"):  # vpt's shipped weights: the identity vpt checks them by
            from .weights import SHIPPED, resolve_shipped
            try:
                resolved, sha = resolve_shipped(BackboneConfig(name=name))
            except Exception as e:  # BackboneError: unknown name, missing file
                raise ArtifactError(f"{path}: base_model_name_or_path {name!r}: {e}") from None
            arch = SHIPPED[name.split(":", 1)[1]]["arch"]
            bb = {"name": name, "library": "timm", "arch": arch, "tag": None, "weights_id": f"file:{sha}",
                  "weights_file": None, "pretrained": True, "init_seed": 0, "model_kwargs": {}}
    elif isinstance(backbone, BackboneAdapter):
        bb = backbone.identity()
    else:
        bb = {"name": str(backbone)}
    if not str(bb["name"]).startswith(("timm:", "vpt:")):
        raise ArtifactError(f"{path}: vpt loads peft-saved adapters for timm models only (the tensor names follow "
                            f"the timm model's modules); {bb['name']!r} is not one")
    head = header.get(PEFT_PREFIX + "head.weight")
    if head is None or len(head[0]) != 2:
        raise ArtifactError(f"{path}: the adapter saves no classifier head (base_model.model.head.weight); vpt needs "
                            f"the head trained with it: save it with peft's modules_to_save=['head'] on a timm model "
                            f"created with num_classes=N")
    dropped = {"base_model_name_or_path", "revision", "inference_mode", "task_type", "modules_to_save",
               "peft_version", "auto_mapping", "runtime_config", "megatron_config", "megatron_core"}
    peft_type = str(config.get("peft_type", "")).upper()
    try:
        _, cls = peft_config_class(peft_type, where="adapter_config")
        defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else
                             f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                    for f in dataclasses.fields(cls) if f.init}
    except ConfigError as e:
        raise ArtifactError(f"{path}: {e}") from None
    spec = {"peft_type": peft_type}
    for k, v in config.items():  # only what differs from peft's defaults: a short, readable vpt config
        if k in defaults and k not in dropped and k != "peft_type" and v != _jsonable(defaults[k]):
            spec[k] = v
    if spec.get("layers_to_transform") is None:
        spec.pop("layers_to_transform", None)
    n = int(head[0][0])
    from .schema import FORMAT, FORMAT_VERSION
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": "peft", "backbone": bb, "peft": spec,
            "head": {"kind": "linear", "pool": "backbone"}, "num_classes": n, "class_names": None}


def _jsonable(v: Any) -> Any:
    if isinstance(v, set):
        return sorted(v)
    return json.loads(json.dumps(v, default=str))
