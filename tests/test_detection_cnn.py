"""CNN detection backbones (vpt.detection.cnn_pyramid): timm feature_info stages at strides 8/16/32 through an FPN
into torchvision FCOS / RetinaNet, frozen or fully fine-tuned, with pixel prompts applied where the detector's
transform puts the image; and the refusals: strides the backbone lacks, pixel prompts without one input size."""
import json
import os

import pytest
import timm
import torch

import vpt
from vpt.config import ConfigError
from vpt.detection import create_detector

from helpers import TINY_VIT, TINY_VIT_NAME

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

CNN = "timm:test_efficientnet"  # timm's tiny EfficientNet (356k params), strides 2..32
SMALL = {"min_size": 64, "max_size": 64, "head_convs": 1, "pyramid": {"out_channels": 32}}


def cnn_detector(kind="fcos", prompt=None, train_backbone=False, **det):
    torch.manual_seed(0)
    return create_detector(CNN, ["blue", "red"], prompt=prompt, detector={"kind": kind, **SMALL, **det},
                           pretrained=False, train_backbone=train_backbone)


def batch():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 64, 64, generator=g) * 0.2, torch.rand(3, 48, 64, generator=g) * 0.2
    a[0, 8:28, 10:30] = 1
    b[0, 4:24, 40:60] = 1
    return [a, b], [{"boxes": torch.tensor([[10.0, 8, 30, 28]]), "labels": torch.tensor([1])},
                    {"boxes": torch.tensor([[40.0, 4, 60, 24]]), "labels": torch.tensor([0])}]


def test_the_maps_are_timms_features_only_stages_at_strides_8_16_32():
    model = cnn_detector()
    bb = model.vit.backbone.model
    ref = timm.create_model("test_efficientnet", features_only=True, out_indices=(2, 3, 4))
    ref.load_state_dict(bb.state_dict(), strict=False)  # the same weights (features_only drops the classifier)
    ref.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = model.vit.forward_intermediates(x, indices=model.pyramid.indices, output_fmt="NCHW",
                                               intermediates_only=True)
        theirs = ref(x)
        feats = model.pyramid(x)
    assert [tuple(t.shape) for t in ours] == [(2, 32, 8, 12), (2, 48, 4, 6), (2, 64, 2, 3)]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert list(feats) == ["0", "1", "2", "p6", "p7"] and model.pyramid.strides == [8, 16, 32, 64, 128]
    assert [tuple(f.shape) for f in feats.values()] == [(2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3), (2, 32, 1, 2),
                                                        (2, 32, 1, 1)]
    assert model.detector.transform.size_divisible == 32
    assert [s[0] for s in model.detector.anchor_generator.sizes] == [8, 16, 32, 64, 128]


@pytest.mark.parametrize("kind", ["fcos", "retinanet"])
def test_frozen_cnn_trains_fpn_and_head_only_and_keeps_batchnorm_statistics(kind):
    model = cnn_detector(kind)
    bb = model.vit.backbone
    assert not any(p.requires_grad for p in bb.parameters())
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    model.train()
    assert not bb.training and model.pyramid.fpn.training
    images, targets = batch()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(model(images, targets).values()).backward()
    opt.step()
    after = model.state_dict()
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert any(n.startswith("detector.backbone.fpn.") for n in changed)
    assert any(n.startswith("detector.head.") for n in changed)
    assert not any(".prompted.backbone." in n for n in changed)  # weights and BatchNorm running stats alike
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert [o["boxes"].shape[1] for o in out] == [4, 4]


def test_full_finetuning_trains_the_backbone_with_frozen_batchnorm_statistics(tmp_path):
    model = cnn_detector(train_backbone=True)
    bb = model.vit.backbone
    assert all(p.requires_grad for p in bb.parameters())
    stats = {n: t.clone() for n, t in bb.named_buffers() if "running" in n}
    w0 = bb.model.conv_stem.weight.detach().clone()
    model.train()
    assert not bb.training  # BatchNorm in eval: batches of a few images cannot estimate its statistics
    images, targets = batch()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(model(images, targets).values()).backward()
    opt.step()
    assert not torch.equal(bb.model.conv_stem.weight, w0)
    assert all(torch.equal(t, stats[n]) for n, t in bb.named_buffers() if n in stats)
    model.eval()
    model.save_pretrained(str(tmp_path / "art"))
    cfg = json.load(open(tmp_path / "art" / "adapter_config.json"))
    assert cfg["train_backbone"] is True and "dynamic_img_size" not in cfg["backbone"]["model_kwargs"]
    loaded = vpt.from_pretrained(str(tmp_path / "art"))
    torch.testing.assert_close(loaded.vit.backbone.model.conv_stem.weight, bb.model.conv_stem.weight)
    with torch.no_grad():
        a, b = model(images), loaded(images)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["scores"], y["scores"])


@pytest.mark.parametrize("prompt", [{"kind": "pixel_pad", "width": 8}, {"kind": "pixel_patch", "size": 16}])
def test_pixel_prompt_is_added_to_the_image_the_transform_normalised_and_resized(tmp_path, prompt):
    model = cnn_detector("retinanet", prompt=prompt, fixed_size=[64, 96])
    assert model.prompt_config.image_size == [64, 96]  # built at the one size every image reaches it
    with torch.no_grad():
        (model.vit.prompt.patch if prompt["kind"] == "pixel_patch" else model.vit.prompt.pad_up).fill_(3.0)
    model.eval()
    images, _ = batch()  # 64x64 and 48x64: both resized to exactly 64x96
    batched, _ = model.detector.transform(images)
    assert tuple(batched.tensors.shape) == (2, 3, 64, 96) and batched.image_sizes == [(64, 96), (64, 96)]
    with torch.no_grad():
        feats = model.pyramid(batched.tensors)
        plain = model.vit.backbone.model.forward_intermediates(
            batched.tensors + model.vit.prompt.delta((64, 96)), indices=model.pyramid.indices, intermediates_only=True)
        ref = model.pyramid.fpn(dict(zip(["0", "1", "2"], plain)))
    for k in ref:
        torch.testing.assert_close(feats[k], ref[k])
    model.save_pretrained(str(tmp_path / "art"))
    loaded = vpt.from_pretrained(str(tmp_path / "art"))
    assert loaded.prompt_config.image_size == [64, 96]
    with torch.no_grad():
        for x, y in zip(model(images), loaded(images)):
            torch.testing.assert_close(x["scores"], y["scores"])


def test_pixel_prompt_refused_where_the_transform_resizes_or_pads_after_it():
    with pytest.raises(ConfigError, match=r"pixel prompt 'pixel_pad' on a detector: torchvision's transform resizes "
                                          r"each image by its own aspect ratio .* set detector.fixed_size: \[H, W\]"):
        cnn_detector(prompt={"kind": "pixel_pad", "width": 8})
    with pytest.raises(ConfigError, match=r"prompt.image_size \[64, 64\] differs from detector.fixed_size \[64, 96\]"
                                          r".*set prompt.image_size to \[64, 96\] or null"):
        cnn_detector(prompt={"kind": "pixel_patch", "size": 8, "image_size": [64, 64]}, fixed_size=[64, 96])
    with pytest.raises(ConfigError, match=r"detector.fixed_size \[64, 80\] is not a multiple of 32 .* pad the batch "
                                          r"after resizing; use e.g. \[64, 96\]"):
        cnn_detector(prompt={"kind": "pixel_pad", "width": 8}, fixed_size=[64, 80])
    with pytest.raises(ConfigError, match=r"pixel prompt 'pixel_patch' on a detector"):  # a ViT detector too
        create_detector(TINY_VIT_NAME, ["a"], prompt={"kind": "pixel_patch", "size": 8}, detector="fcos",
                        pretrained=False, model_kwargs=TINY_VIT)
    cnn_detector(prompt={"kind": "pixel_pad", "width": 8}, fixed_size=[64, 96])  # the fix works


def test_strides_the_backbone_lacks_are_refused_with_the_ones_it_has():
    with pytest.raises(ConfigError, match=r"detector.pyramid.strides \[8, 16, 64\]: backbone 'timm:test_efficientnet' "
                                          r"has feature maps at strides \[2, 4, 8, 16, 32\], so \[64\] cannot feed the "
                                          r"pyramid; set detector.pyramid.strides to strides it has \(e.g. \[8, 16, 32\]\)"):
        cnn_detector(pyramid={"out_channels": 32, "strides": [8, 16, 64]})
    with pytest.raises(ConfigError, match=r"distinct and increasing"):
        cnn_detector(pyramid={"out_channels": 32, "strides": [32, 16, 8]})
    with pytest.raises(ConfigError, match=r"pick ViT blocks.*drop blocks / norm"):
        cnn_detector(pyramid={"out_channels": 32, "blocks": [-1]})
    four = cnn_detector(pyramid={"out_channels": 32, "strides": [4, 8, 16, 32]})
    assert four.pyramid.strides[:4] == [4, 8, 16, 32]
    vit = dict(pretrained=False, model_kwargs=TINY_VIT)  # ViT: strides are patch size / scale
    with pytest.raises(ConfigError, match=r"detector.pyramid.strides \[4, 16\] do not match backbone "
                                          r"'timm:vit_tiny_patch16_224': its patch size 8 with scales \[2.0, 1.0\] "
                                          r"gives strides \[4, 8\]; set detector.pyramid.scales to \[2.0, 0.5\]"):
        create_detector(TINY_VIT_NAME, ["a"], detector={"kind": "fcos", "pyramid": {
            "out_channels": 32, "scales": [2.0, 1.0], "strides": [4, 16]}}, **vit)
    create_detector(TINY_VIT_NAME, ["a"], detector={"kind": "fcos", "pyramid": {
        "out_channels": 32, "scales": [2.0, 1.0], "strides": [4, 8]}}, **vit)


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "detection")


@pytest.mark.parametrize("name", sorted(f[:-5] for f in os.listdir(CONFIGS) if f.endswith(".yaml")))
def test_detection_configs_build_the_detector_they_name(name):
    """Every configs/detection recipe parses strictly and builds (weights left out: random init here)."""
    import dataclasses

    import yaml

    from vpt.config import from_dict
    from vpt.tasks.detection import DetectionRunConfig
    with open(os.path.join(CONFIGS, name + ".yaml"), encoding="utf-8") as f:
        cfg = from_dict(DetectionRunConfig, yaml.safe_load(f), where=name)
    bb, det = cfg.model.backbone, cfg.detector
    assert cfg.output.dir.endswith(name) and det.kind in name
    torch.manual_seed(0)
    model = create_detector(dataclasses.replace(bb, pretrained=False), ["Platelets", "RBC", "WBC"],
                            prompt=cfg.model.prompt, detector=det, train_backbone=cfg.model.train_backbone)
    arm = name.split("_", 2)[2]
    kind = None if model.prompt_config is None else model.prompt_config.kind
    assert kind == {"head": None, "full": None, "pixel_pad": "pixel_pad", "pixel_patch": "pixel_patch",
                    "vpt_deep": "vpt_deep", "random_vpt_deep": "vpt_deep"}[arm]
    assert model.train_backbone == (arm == "full")
    if name.startswith("effnet"):
        assert model.pyramid.strides[:3] == [8, 16, 32] and bb.name == "timm:tf_efficientnet_lite0" and bb.pretrained
    else:
        assert model.pyramid.strides[:2] == [8, 16] and bb.name == "vpt:vit_tiny_cifar10"
        assert bb.pretrained == (arm != "random_vpt_deep")
