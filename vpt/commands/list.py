"""``vpt list``: prompt kinds, heads and backbone families this build supports."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("list", help="list prompt kinds, heads and backbone families")
    p.set_defaults(func=run)


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
