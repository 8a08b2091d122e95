"""Prompted detectors: pyramid maps vs timm's forward_intermediates, train / eval steps of FCOS,
RetinaNet and Faster R-CNN (torchvision) on CPU, frozen ViT, artifact round-trip with the class list."""
import json
import os

import pytest
import torch

import vpt
from vpt.backbones import BackboneError
from vpt.config import ConfigError
from vpt.detection import create_detector

from helpers import TINY_VIT, TINY_VIT_NAME


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


TINY = {**TINY_VIT, "dynamic_img_size": True}
SMALL = {"min_size": 64, "max_size": 64, "head_convs": 1, "box_head_dim": 32,
         "pyramid": {"out_channels": 32, "scales": [2.0, 1.0, 0.5]}}


def tiny_detector(kind, prompt="vpt_deep", classes=("blue", "red"), **det):
    torch.manual_seed(0)
    return create_detector(TINY_VIT_NAME, list(classes), prompt=prompt, detector={"kind": kind, **SMALL, **det},
                           pretrained=False, model_kwargs=TINY)


def batch(offset):
    """Two images (one not square) with boxes on bright squares; labels already offset for the detector."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 64, 64, generator=g) * 0.2, torch.rand(3, 48, 64, generator=g) * 0.2
    a[0, 8:28, 10:30] = 1
    a[2, 36:56, 30:50] = 1
    b[0, 4:24, 40:60] = 1
    targets = [{"boxes": torch.tensor([[10.0, 8, 30, 28], [30, 36, 50, 56]]), "labels": torch.tensor([1, 0]) + offset},
               {"boxes": torch.tensor([[40.0, 4, 60, 24]]), "labels": torch.tensor([1]) + offset}]
    return [a, b], targets


LOSS_KEYS = {"fcos": {"classification", "bbox_regression", "bbox_ctrness"},
             "retinanet": {"classification", "bbox_regression"},
             "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}}


@pytest.mark.parametrize("kind", ["fcos", "retinanet", "faster_rcnn"])
def test_train_step_updates_prompts_pyramid_head_only_and_eval_gives_boxes(kind):
    model = tiny_detector(kind)
    assert model.label_offset == (1 if kind == "faster_rcnn" else 0)
    vit_params = dict(model.vit.backbone.named_parameters())
    assert vit_params and not any(p.requires_grad for p in vit_params.values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images, targets = batch(model.label_offset)
    model.train()
    assert not model.vit.backbone.training  # frozen ViT: no dropout / drop-path
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS[kind] and all(torch.isfinite(v) for v in losses.values())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(losses.values()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith("detector.backbone.vit.backbone.") for n in changed)
    assert any(".vit.prompt." in n for n in changed)
    assert any(n.startswith("detector.backbone.stages.") for n in changed)
    assert any(n.startswith(("detector.head.", "detector.roi_heads.")) for n in changed)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, (h, w) in zip(out, [(64, 64), (48, 64)]):
        assert o["boxes"].shape[1] == 4 and len(o["boxes"]) == len(o["scores"]) == len(o["labels"])
        if len(o["boxes"]):  # boxes come back in each image's own pixels
            assert float(o["boxes"][:, [0, 2]].max()) <= w + 1e-3 and float(o["boxes"][:, [1, 3]].max()) <= h + 1e-3
            labels = o["labels"] - model.label_offset
            assert int(labels.min()) >= 0 and int(labels.max()) < 2


def test_fcos_learns_a_batch():
    model = tiny_detector("fcos")
    images, targets = batch(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def _timm(model):
    return model.vit.backbone.model


@pytest.mark.parametrize("blocks,norm", [(None, False), ([0, 1, 1], False), (None, True)])
def test_vit_maps_match_timm_forward_intermediates_unprompted(blocks, norm):
    model = tiny_detector("fcos", prompt=None, pyramid={"out_channels": 32, "scales": [2.0, 1.0, 0.5],
                                                         "blocks": blocks, "norm": norm})
    x = torch.randn(2, 3, 48, 64)  # not the 32x32 the ViT was built for: position embeddings resampled
    with torch.no_grad():
        ours = model.pyramid.vit_maps(x)
        idx = sorted(set(model.pyramid.blocks))
        ref = _timm(model).forward_intermediates(x, indices=idx, norm=norm, output_fmt="NCHW", intermediates_only=True)
    assert sorted(ours) == idx
    for i, r in zip(idx, ref):
        assert ours[i].shape == (2, 32, 6, 8)
        torch.testing.assert_close(ours[i], r, rtol=0, atol=0)


def test_prompts_change_the_maps_but_not_their_layout():
    plain, prompted = tiny_detector("fcos", prompt=None), tiny_detector("fcos", prompt={"kind": "vpt_deep", "num_tokens": 4})
    prompted.vit.backbone.load_state_dict(plain.vit.backbone.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = plain.pyramid.vit_maps(x)[1], prompted.pyramid.vit_maps(x)[1]
    assert a.shape == b.shape == (1, 32, 8, 8)
    assert (a - b).abs().max() > 1e-3


def test_pyramid_levels_strides_and_names():
    model = tiny_detector("fcos")
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        feats = model.pyramid(x)
    assert list(feats) == ["0", "1", "2", "p6", "p7"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)]
    assert all(f.shape[:2] == (1, 32) for f in feats.values()) and model.pyramid.out_channels == 32
    assert model.pyramid.strides == [4, 8, 16, 32, 64] and model.pyramid.size_divisible == 64
    frcnn = tiny_detector("faster_rcnn")
    assert frcnn.pyramid.level_names == ["0", "1", "2", "pool"]
    assert frcnn.detector.transform.size_divisible == 32


def test_anchors_follow_the_strides_and_normalisation_is_the_backbones():
    fcos, retina, frcnn = tiny_detector("fcos"), tiny_detector("retinanet"), tiny_detector("faster_rcnn")
    assert [s[0] for s in fcos.detector.anchor_generator.sizes] == [4, 8, 16, 32, 64]  # FCOS: one point per cell
    assert retina.detector.anchor_generator.sizes[0] == pytest.approx((16, 16 * 2 ** (1 / 3), 16 * 2 ** (2 / 3)))
    assert [s[0] for s in frcnn.detector.rpn.anchor_generator.sizes] == [32, 64, 128, 256]
    dc = fcos.vit.backbone.data_config()
    for m in (fcos, retina, frcnn):
        assert m.detector.transform.image_mean == list(dc.mean) and m.detector.transform.image_std == list(dc.std)


def test_input_not_a_multiple_of_the_patch_size_says_how_to_fix():
    model = tiny_detector("fcos")
    with pytest.raises(ValueError, match=r"input 60x64 is not a multiple of the patch size 8x8; resize or pad it "
                                         r"\(e.g. to 64x64\)"):
        model.pyramid(torch.randn(1, 3, 60, 64))
    model.eval()
    with torch.no_grad():  # through the detector: its transform resizes and pads to a multiple
        out = model([torch.rand(3, 60, 70), torch.rand(3, 50, 64)])
    assert out[0]["boxes"].shape[1] == 4 and out[1]["boxes"].shape[1] == 4


def test_config_errors():
    with pytest.raises(ConfigError, match=r"unknown detector kind 'fcoss'.*did you mean 'fcos'"):
        tiny_detector("fcoss")
    with pytest.raises(ConfigError, match=r"multiple of 32"):
        tiny_detector("fcos", pyramid={"out_channels": 16, "scales": [1.0]})
    with pytest.raises(ConfigError, match=r"not a power of two"):
        tiny_detector("retinanet", pyramid={"out_channels": 32, "scales": [3.0, 1.0]})
    with pytest.raises(BackboneError, match=r"dynamic_img_size: true"):
        create_detector(TINY_VIT_NAME, ["a"], detector="fcos", pretrained=False,
                        model_kwargs={**TINY_VIT, "dynamic_img_size": False})


@pytest.mark.parametrize("kind", ["fcos", "faster_rcnn"])
def test_artifact_round_trip_keeps_class_list_and_outputs(tmp_path, kind):
    classes = ["platelet", "rbc", "wbc"]
    model = tiny_detector(kind, classes=classes)
    images, targets = batch(model.label_offset)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    sum(model(images, targets).values()).backward()
    opt.step()
    model.eval()
    model.save_pretrained(str(tmp_path / "art"))
    cfg = json.load(open(tmp_path / "art" / "adapter_config.json"))
    assert cfg["model_type"] == "detection" and cfg["class_names"] == classes
    assert cfg["label_map"] == {c: i + model.label_offset for i, c in enumerate(classes)}
    assert cfg["detector"]["kind"] == kind and cfg["backbone"]["model_kwargs"]["dynamic_img_size"] is True
    loaded = vpt.from_pretrained(str(tmp_path / "art"))
    assert type(loaded).__name__ == "PromptedDetector"
    assert loaded.class_names == classes and loaded.label_map == model.label_map
    ours, theirs = model.trainable_state_dict(), loaded.trainable_state_dict()
    assert sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not any(k.startswith("detector.backbone.vit.backbone.") for k in ours)  # frozen ViT not stored
    with torch.no_grad():
        a, b = model(images), loaded(images)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["boxes"], y["boxes"])
        torch.testing.assert_close(x["scores"], y["scores"])
        assert torch.equal(x["labels"], y["labels"])
    assert os.path.getsize(tmp_path / "art" / "adapter_model.safetensors") < 2_000_000
