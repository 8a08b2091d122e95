"""``vpt list``: prompt kinds, heads and backbone families this build supports."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("list", help="list prompt kinds, heads and backbone families (`vpt list recipes`: recipes)")
    p.set_defaults(func=run)
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.add_parser("recipes", help="the recipes that ship with vpt (vpt train -c NAME)").set_defaults(func=run_recipes)


def run(args) -> int:
    from .. import heads, prompts  # noqa: F401  (register the built-in kinds)
    from ..registry import BACKBONES, HEADS, PROMPTS
    from ..weights import SHIPPED

    print("prompt kinds:")
    for e in PROMPTS:
        print(f"  {e.name:<14} {e.help}")
    print("heads:")
    for e in HEADS:
        print(f"  {e.name:<14} {e.help}")
    print("backbone families:")
    for e in BACKBONES:
        print(f"  {e.name + ':':<14} {e.help}")
    print("token prompts:   timm VisionTransformer (ViT, DeiT incl. distilled, DINOv2, SigLIP, registers,")
    print("                 no_embed_class, dynamic_img_size), timm Eva (EVA-02, RoPE), open_clip ViT towers")
    print("pixel prompts:   any timm model (CNNs included) and any open_clip image tower")
    print("shipped weights: " + (", ".join(f"vpt:{n}" for n in sorted(SHIPPED)) or "none"))
    return 0


def run_recipes(args) -> int:
    """``vpt list recipes``: name, task and the first line of each packaged recipe's comment."""
    from .. import recipes
    infos = [recipes.describe(n) for n in recipes.names()]
    width = max(len(i.name) for i in infos)
    print(f"recipes (vpt train -c NAME; default: {recipes.DEFAULT}; a YAML path works too):")
    for i in infos:
        mark = "*" if i.name == recipes.DEFAULT else " "
        print(f" {mark}{i.name:<{width}}  {i.task:<14} {i.description}")
    return 0
