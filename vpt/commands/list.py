"""``vpt list``: prompt kinds (with their fields), heads, model types and backbone families of this build.

Each listing is one function over a registry, so a new listing (``vpt list recipes``) is one more entry in
``SECTIONS``. Field help comes from the config dataclasses' declarations (``vpt.config.option``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict


def register(sub) -> None:
    p = sub.add_parser("list", help="list prompt kinds (with their fields), heads, methods and peft "
                                           "tuners, model types and backbones")
    p.add_argument("what", nargs="?", choices=sorted(SECTIONS), help="list only this (default: all)")
    p.add_argument("--fields", action="store_true", help="also show every field of each kind with its help")
    p.set_defaults(func=run)


def _fields(cls, indent: str = "      ") -> None:
    from ..config import field_help
    for name, text in field_help(cls).items():
        print(f"{indent}{name:<22} {text}")


def _entries(registry, fields: bool) -> None:
    for e in registry:
        print(f"  {e.name:<14} {e.help}")
        if fields and e.config_cls is not None:
            _fields(e.config_cls)
    for u in registry.unavailable():
        print(f"  (unavailable: {u.module} needs {u.missing!r}; {u.fix})")


def list_prompts(fields: bool) -> None:
    from ..registry import PROMPTS
    print("prompt kinds (model.prompt; CLIP text kinds go in model.text):")
    _entries(PROMPTS, fields)


def list_heads(fields: bool) -> None:
    from ..registry import HEADS
    print("heads (model.head of a classifier):")
    _entries(HEADS, fields)


def list_methods(fields: bool) -> None:
    from ..registry import METHODS
    print("methods (model.method of a classifier: vision PEFT methods peft lacks):")
    _entries(METHODS, fields)
    print("peft tuners (model.type: peft, model.peft: {peft_type: ..., ...peft's own fields}):")
    try:
        from ..peft_format import REFUSED, supported_types
        from ..peft_model import TUNER_HELP
        types = supported_types()
    except ImportError as e:
        print(f"  (unavailable: {e})")
        return
    for name in types:
        print(f"  {name:<14} {TUNER_HELP.get(name, 'peft tuner, built as peft defines it (not in vpt tests; see peft docs)')}")
    if fields:
        for name, why in sorted(REFUSED.items()):
            print(f"  {name:<14} refused: {why}")


def list_model_types(fields: bool) -> None:
    from ..registry import MODEL_TYPES
    print("model types (model.type) and the sections each adds:")
    for name in MODEL_TYPES.names():
        try:
            cls = MODEL_TYPES.get(name).factory
        except ImportError as e:  # an optional dependency of that type is missing
            print(f"  {name:<14} (unavailable: {e})")
            continue
        sections = getattr(cls, "config_sections", None)
        names = [f.name for f in dataclasses.fields(sections)] if sections is not None else []
        print(f"  {name:<14} {', '.join(names)}")
        if fields and sections is not None:
            _fields(sections)


def list_backbones(fields: bool) -> None:
    from ..registry import BACKBONES
    from ..weights import SHIPPED
    print("backbone families:")
    for e in BACKBONES:
        print(f"  {e.name + ':':<14} {e.help}")
    print("token prompts:   timm VisionTransformer (ViT, DeiT incl. distilled, DINOv2, SigLIP, registers,")
    print("                 no_embed_class, dynamic_img_size), timm Eva (EVA-02, RoPE), open_clip ViT towers")
    print("pixel prompts:   any timm model (CNNs included) and any open_clip image tower")
    print("shipped weights: " + (", ".join(f"vpt:{n}" for n in sorted(SHIPPED)) or "none"))


def list_recipes(fields: bool) -> None:
    """``vpt list recipes``: name, task and the first line of each packaged recipe's comment."""
    from .. import recipes
    infos = [recipes.describe(n) for n in recipes.names()]
    width = max(len(i.name) for i in infos)
    print(f"recipes (vpt train -c NAME; default: {recipes.DEFAULT}; a YAML path works too):")
    for i in infos:
        mark = "*" if i.name == recipes.DEFAULT else " "
        print(f" {mark}{i.name:<{width}}  {i.task:<14} {i.description}")


# name -> listing; `vpt list NAME` prints one, `vpt list` all in this order
SECTIONS: Dict[str, Callable[[bool], None]] = {
    "prompts": list_prompts, "heads": list_heads, "methods": list_methods, "models": list_model_types,
    "backbones": list_backbones,
    "recipes": list_recipes,
}


def run(args) -> int:
    what = getattr(args, "what", None)
    fields = bool(getattr(args, "fields", False)) or what is not None
    for name, show in SECTIONS.items():
        if what is None or what == name:
            show(fields)
    return 0
