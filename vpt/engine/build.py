"""Model construction from the run config's ``model`` section (shared by train, eval and other tasks)."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
from typing import Any, List

import torch

from ..config import ConfigError, to_dict
from ..registry import MODEL_TYPES


def ensure_model_type(name: str) -> None:
    """Model types other than 'classifier' register when their module is imported (e.g. vpt.clip);
    import ``vpt.<name>`` if the type isn't registered yet."""
    if name in MODEL_TYPES:
        return
    try:
        importlib.import_module(f"vpt.{name}")
    except ImportError:
        pass


def ensure_artifact_type(artifact_dir: str) -> None:
    """Make sure the model type an artifact names is registered before ``vpt.from_pretrained``."""
    path = os.path.join(artifact_dir, "adapter_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            ensure_model_type(str(json.load(f).get("model_type", "classifier")))
    except (OSError, ValueError, AttributeError):
        pass  # from_pretrained reports a missing / broken config with its own message


def build_model(section: Any, class_names: List[str]) -> torch.nn.Module:
    """``classifier`` -> ``vpt.create_model``; any other type -> ``MODEL_TYPES[type].factory.from_section``."""
    from .. import create_model
    if section.type == "classifier":
        if section.text is not None:
            raise ConfigError("model.text is only used by model.type 'clip'; remove it or set model.type: clip")
        if section.lora is not None:
            raise ConfigError("model.lora is only used by model.type 'lora'; remove it or set model.type: lora")
        backbone = section.backbone
        if dataclasses.is_dataclass(backbone):
            backbone = dataclasses.replace(backbone)
        return create_model(backbone, prompt=section.prompt, num_classes=len(class_names), head=section.head,
                            class_names=list(class_names), train_backbone=section.train_backbone)
    ensure_model_type(section.type)
    try:
        entry = MODEL_TYPES.get(section.type)
    except KeyError as e:
        raise ConfigError(f"model.type: {e.args[0]}") from None
    factory = entry.factory
    if not hasattr(factory, "from_section"):
        raise ConfigError(f"model.type {section.type!r} can't be built from a run config (its class has no "
                          f"from_section); available for training: classifier")
    return factory.from_section(section, list(class_names))


def amp_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: torch.device, dtype_name: str):
    """torch.autocast for bf16 / fp16; a no-op context for float32."""
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(dtype_name))


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` (NHWC) or the default contiguous (NCHW) layout."""
    return torch.channels_last if channels_last else torch.contiguous_format


def count_parameters(model: torch.nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(total, 1)}


def config_dict(cfg: Any) -> dict:
    return to_dict(cfg)
