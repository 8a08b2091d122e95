"""The Hugging Face Hub id of a backbone's pretrained weights (a model card's ``base_model``).

Read from the libraries' own pretrained configs (timm's ``hf_hub_id``, open_clip's ``hf_hub``); None when
the weights have no hub id (random init, a local file, vpt's shipped weights, a tag the library serves
from elsewhere). Used by ``vpt.hub`` for the card it writes and the card it checks on load.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional


def base_model_id(backbone: Mapping[str, Any]) -> Optional[str]:
    """``backbone`` is an artifact's saved backbone section (``name``, ``arch``, ``tag``, ``weights_id``)."""
    name = str(backbone.get("name") or "")
    weights_id = str(backbone.get("weights_id") or "")
    if not weights_id.startswith("hub:"):
        return None
    library, _, spec = name.partition(":")
    try:
        if library == "timm":
            import timm
            arch, _, tag = spec.partition(".")
            cfg = timm.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
            hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        elif library == "open_clip":
            if spec.startswith("hf-hub:"):
                return spec[len("hf-hub:"):].split("@")[0].strip("/") or None
            import open_clip
            arch, _, tag = spec.partition("/")
            hub_id = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub") if tag else None
        else:
            return None
    except (ImportError, RuntimeError, ValueError, KeyError):  # unknown arch / tag: no hub id to claim
        return None
    return str(hub_id).strip("/") or None if hub_id else None
