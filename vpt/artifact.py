"""peft-like artifacts: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only the trainable tensors are stored, plus everything needed to rebuild the model: the backbone's
library, architecture, weights tag or file hash, the prompt and head configs, class names and
preprocessing. Loading reads JSON and safetensors only: nothing is unpickled.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Union

import torch

from .backbones import BackboneAdapter, BackboneConfig, create_backbone
from .backbones.base import sha256_file
from .errors import ArtifactError  # noqa: F401  (re-exported: vpt.ArtifactError)
from .io import atomic_write, atomic_write_json
from .registry import MODEL_TYPES

_logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "vpt-adapter"
FORMAT_VERSION = 1


def save_pretrained(model, save_directory: str) -> None:
    from safetensors.torch import save_file

    from .version import __version__
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "vpt_version": __version__, **model.to_config()}
    tensors = {k: v.contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    os.makedirs(save_directory, exist_ok=True)
    # weights first, config last: a folder with a config always has its matching weights
    atomic_write(os.path.join(save_directory, WEIGHTS_NAME),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "vpt_format": FORMAT}))
    atomic_write_json(os.path.join(save_directory, CONFIG_NAME), config)


def read_config(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isdir(directory):
        raise ArtifactError(f"artifact folder not found: {directory!r}; pass the folder that holds {CONFIG_NAME}")
    if not os.path.isfile(path):
        raise ArtifactError(f"{directory!r} has no {CONFIG_NAME}; is it a vpt artifact folder (e.g. runs/x/best)?")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is corrupt ({e}); re-save the artifact or restore it from a copy") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a vpt adapter config (format={config.get('format') if isinstance(config, dict) else None!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {version!r}, newer than this vpt reads ({FORMAT_VERSION}); "
                            f"upgrade vpt (pip install -U vpt)")
    return config


def _check_same_backbone(saved: Dict[str, Any], backbone: BackboneAdapter) -> None:
    have = backbone.identity()
    for key in ("library", "arch", "model_kwargs", "weights_id"):
        if saved.get(key) != have.get(key):
            raise ArtifactError(
                f"artifact was made for another backbone: {key} is {saved.get(key)!r} in the artifact but "
                f"{have.get(key)!r} in the backbone given ({have['name']}); load it onto the backbone it was "
                f"trained with ({saved.get('name')})")


def _backbone_from_saved(saved: Dict[str, Any], weights: Optional[str]) -> BackboneAdapter:
    weights = weights or saved.get("weights_file")
    wid = str(saved.get("weights_id", ""))
    if str(saved.get("name", "")).startswith("vpt:"):  # weights shipped inside the package
        bb = create_backbone(BackboneConfig(name=saved["name"], pretrained=bool(saved.get("pretrained", True)),
                                            init_seed=int(saved.get("init_seed", 0)),
                                            model_kwargs=dict(saved.get("model_kwargs") or {})))
        _check_same_backbone(saved, bb)
        return bb
    if wid.startswith("file:"):
        if not weights or not os.path.isfile(weights):
            raise ArtifactError(f"the artifact's backbone weights file {saved.get('weights_file')!r} is missing "
                                f"(sha256 {wid[5:]}); pass weights=PATH (--weights PATH) to the same file")
        if sha256_file(weights) != wid[5:]:
            raise ArtifactError(f"weights file {weights!r} is not the one the artifact was trained with "
                                f"(sha256 differs: expected {wid[5:]}); pass the original file")
    else:
        weights = None
    cfg = BackboneConfig(name=saved["name"], weights=weights, pretrained=bool(saved.get("pretrained", True)),
                         init_seed=int(saved.get("init_seed", 0)), model_kwargs=dict(saved.get("model_kwargs") or {}))
    return create_backbone(cfg)


def from_pretrained(directory: str, backbone: Union[None, str, BackboneAdapter] = None,
                    weights: Optional[str] = None, device: Union[str, torch.device] = "cpu"):
    """Rebuild a model saved with ``save_pretrained``.

    Args:
        directory: the artifact folder.
        backbone: an already built adapter to put the prompts on (checked against the artifact);
            default: rebuild the backbone the artifact names.
        weights: the backbone weights file, if the artifact was made from one that has moved.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(directory)
    wpath = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(wpath):
        raise ArtifactError(f"{directory!r} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the artifact is incomplete")
    try:
        tensors = load_file(wpath)
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{wpath} is corrupt ({e}); re-save the artifact or restore it from a copy") from None
    saved_bb = config.get("backbone") or {}
    if isinstance(backbone, BackboneAdapter):
        _check_same_backbone(saved_bb, backbone)
    elif isinstance(backbone, str):
        if backbone != saved_bb.get("name"):
            raise ArtifactError(f"artifact was made for backbone {saved_bb.get('name')!r}, not {backbone!r}")
        backbone = _backbone_from_saved(saved_bb, weights)
    else:
        backbone = _backbone_from_saved(saved_bb, weights)
    try:
        cls = MODEL_TYPES.get(config.get("model_type", "classifier")).factory
    except KeyError as e:
        raise ArtifactError(f"{e.args[0]} (the artifact may need a newer vpt or an optional extra)") from None
    model = cls.from_config(config, backbone)
    if hasattr(model, "upgrade_tensors"):
        tensors = model.upgrade_tensors(tensors)  # artifacts saved by an older vpt (e.g. stacked deep prompts)
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{wpath} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ArtifactError(f"{wpath}: tensor {name} has shape {tuple(t.shape)}, the config builds "
                                f"{tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    return model.to(device)
