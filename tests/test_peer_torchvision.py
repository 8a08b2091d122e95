"""torchvision's detectors on a prompted ViT, built the way torchvision's docs and tests build them: the
detector's own constructor with its DEFAULT anchor generator and transform (min_size=800), a training step
with a negative sample (torchvision's test_models_detection_negative_samples), eval outputs, and input
gradients through the whole detector. Traps refused at build time name the fix."""
import pytest
import torch

import vpt
from vpt.backbones import BackboneError, create_backbone

tv_det = pytest.importorskip("torchvision.models.detection")
from vpt.detection.pyramid import ViTFeaturePyramid  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# patch 32 keeps torchvision's 800 px resize cheap on a CPU: 25 x 34 tokens
VIT = dict(img_size=64, patch_size=32, embed_dim=32, depth=2, num_heads=2, dynamic_img_size=True)
PROMPTS = {"none": None, "vpt_deep": {"kind": "vpt_deep", "num_tokens": 2},
           "vpt_prefix": {"kind": "vpt_prefix", "num_tokens": 2}, "pixel_pad": {"kind": "pixel_pad", "width": 8}}
DETECTORS = {"fasterrcnn": ("pool", tv_det.FasterRCNN), "retinanet": ("p6p7", tv_det.RetinaNet),
             "fcos": ("p6p7", tv_det.FCOS)}


def prompted_vit(prompt, **kw):
    bb = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, init_seed=0, model_kwargs=dict(VIT, **kw))
    torch.manual_seed(0)
    return vpt.create_model(bb, prompt=PROMPTS[prompt])


def detector(kind, prompt):
    extra, cls = DETECTORS[kind]
    backbone = ViTFeaturePyramid(prompted_vit(prompt), out_channels=32, extra=extra)  # default scales
    assert backbone.num_maps == 5  # what torchvision's default anchor generators expect
    torch.manual_seed(0)
    return cls(backbone, num_classes=3)  # torchvision's defaults: anchors, min_size=800, max_size=1333


def samples():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 60, 80, generator=g), torch.rand(3, 72, 56, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]  # negative sample
    return images, targets


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("kind", list(DETECTORS))
def test_torchvision_detector_with_default_anchors_and_resize(kind, prompt):
    model = detector(kind, prompt)
    images, targets = samples()
    model.train()
    losses = model(images, targets)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    vit = model.backbone.vit
    if vit.prompt is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vit.prompt.parameters())
    assert all(p.grad is None for p in vit.backbone.parameters())  # the ViT stays frozen
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all({"boxes", "scores", "labels"} <= set(o) for o in out)
    assert all(o["boxes"].shape[-1] == 4 for o in out)


def test_input_gradients_reach_the_images():
    """Saliency through a detector: torchvision's transform, the prompted ViT and the heads."""
    model = detector("fcos", "vpt_deep").eval()
    images = [torch.rand(3, 60, 80, requires_grad=True)]
    out = model(images)[0]
    score = out["scores"].sum() if out["scores"].numel() else model.backbone(
        model.transform(images)[0].tensors)["0"].sum()
    (g,) = torch.autograd.grad(score, images[0])
    assert g.shape == images[0].shape and g.abs().sum() > 0


def test_pixel_prompts_follow_the_resized_input():
    vit = prompted_vit("pixel_pad")
    p = vit.prompt
    built = p.delta()
    resized = p.delta((96, 128))
    assert built.shape[-2:] == (64, 64) and resized.shape[-2:] == (96, 128)
    w = p.width
    assert resized[..., w:-w, w:-w].abs().sum() == 0 and resized[..., :w, :].abs().sum() > 0  # same border width
    torch.testing.assert_close(p.delta((64, 64)), built, rtol=0, atol=0)  # the built size is unchanged


def test_fixed_size_vit_is_refused_when_the_pyramid_is_built():
    with pytest.raises(BackboneError, match=r"64x64 px inputs only.*dynamic_img_size: true"):
        ViTFeaturePyramid(prompted_vit("none", dynamic_img_size=False), out_channels=32, extra="p6p7")


def test_open_clip_tower_is_refused_for_detection():
    pytest.importorskip("open_clip")
    clip_kw = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                   text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    vit = vpt.create_model(create_backbone("open_clip:ViT-B-32", pretrained=False, model_kwargs=clip_kw))
    with pytest.raises(BackboneError, match=r"32x32 px inputs only.*timm ViT"):
        ViTFeaturePyramid(vit, out_channels=32)
