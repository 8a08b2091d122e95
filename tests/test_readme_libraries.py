"""The snippets of docs/libraries.md (the README's "Other libraries, in brief" links there) run as written,
with tiny random models substituted for the hub names (each substitution must match, so the page and this
test cannot drift apart)."""
import os
import re

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
LIBRARIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "libraries.md")
VIT = 'pretrained=False, model_kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)'
CLIP = ('pretrained=False, model_kwargs=dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, '
        'patch_size=8, head_width=16), text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))')
SUBSTITUTE = {
    'prompt="vpt_deep", num_classes=10)': f'prompt="vpt_deep", num_classes=10, {VIT})',
    '"open_clip:ViT-B-32/laion2b_s34b_b79k", ["cat", "dog"], prompt={"kind": "vpt_deep", "num_tokens": 4})':
        f'"open_clip:ViT-B-32", ["cat", "dog"], prompt={{"kind": "vpt_deep", "num_tokens": 4}}, {CLIP})',
    'torch.randn(4, 3, 224, 224)': 'torch.randn(4, 3, 32, 32)',
    'model_kwargs={"dynamic_img_size": True})': ('pretrained=False, model_kwargs=dict(img_size=64, patch_size=32, '
                                                 'embed_dim=32, depth=2, num_heads=2, dynamic_img_size=True))'),
    'ViTFeaturePyramid(vit, extra="p6p7")': 'ViTFeaturePyramid(vit, out_channels=32, extra="p6p7")',
}


def snippets():
    with open(LIBRARIES, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


@pytest.mark.slow
def test_readme_library_snippets_run():
    import torch
    blocks = snippets()
    assert len(blocks) == 5
    found = set()
    scope = {}
    for i, code in enumerate(blocks):
        for old, new in SUBSTITUTE.items():
            if old in code:
                found.add(old)
                code = code.replace(old, new)
        exec(compile(code, f"docs/libraries.md:snippet {i}", "exec"), scope)
        # what each snippet promises, checked on what it left behind
        if i == 0:
            assert scope["config"]["mean"] == (0.48145466, 0.4578275, 0.40821073)  # CLIP's, not ImageNet's
            assert scope["logits"].shape == (1, 10)
        elif i == 1:
            scales = {g["lr_scale"] for g in scope["optimizer"].param_groups}
            assert len(scales) > 2  # layer-decay groups, prompts included
        elif i == 2:
            assert scope["x"].grad is not None and scope["saliency"].shape == (1, 32, 32)
        elif i == 3:
            assert torch.isfinite(scope["total_loss"]) and tuple(scope["preprocess_cfg"]["size"]) == (32, 32)
        else:
            assert isinstance(scope["detections"], list) and {"boxes", "scores", "labels"} <= set(scope["detections"][0])
    assert found == set(SUBSTITUTE), f"docs/libraries.md snippets changed: {sorted(set(SUBSTITUTE) - found)} not found"
