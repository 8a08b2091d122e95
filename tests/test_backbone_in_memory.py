"""`vpt.create_model(backbone=<a timm model in memory>)` and `vpt.clip.create_clip_model(backbone=<an open_clip
model>)`: no temporary file; the artifact records the name, model_kwargs and the weights' sha256, loads with
backbone= the same module, and says what to pass without it."""
import pytest
import torch

import vpt
from helpers import TINY_VIT
from vpt.errors import ArtifactError, BackboneError

pytestmark = pytest.mark.usefixtures("one_thread")


def timm_module(seed=0):
    import timm
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT)


def test_timm_module_in_memory_matches_the_named_backbone_and_round_trips(tmp_path):
    mem = timm_module()
    sd = {k: v.clone() for k, v in mem.state_dict().items()}
    torch.manual_seed(1)
    model = vpt.create_model(mem, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3,
                             model_kwargs=TINY_VIT)
    ident = model.backbone.identity()
    assert ident["name"] == "timm:vit_tiny_patch16_224" and ident["weights_id"].startswith("memory:")
    assert ident["model_kwargs"] == TINY_VIT
    # the same network as the backbone built by name with those weights
    ref_bb = vpt.create_backbone("timm:vit_tiny_patch16_224", pretrained=False, model_kwargs=TINY_VIT)
    ref_bb.model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("head.")}, strict=False)
    ref = vpt.create_model(ref_bb, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3)
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    out = str(tmp_path / "art")
    model.save_pretrained(out)
    with pytest.raises(ArtifactError, match=r"built in memory .*pass it: vpt.from_pretrained\(DIR, backbone=module\)"):
        vpt.from_pretrained(out)
    again = vpt.from_pretrained(out, backbone=timm_module())
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    with pytest.raises(ArtifactError, match="weights_id"):  # other weights: the hash says so
        vpt.from_pretrained(out, backbone=timm_module(seed=5))


def test_module_that_is_not_what_it_claims_is_refused():
    with pytest.raises(BackboneError, match="pass model_kwargs="):
        vpt.create_model(timm_module(), num_classes=2)  # built with TINY_VIT, recorded without: refused
    with pytest.raises(BackboneError, match="pass name="):
        vpt.create_model(torch.nn.Linear(3, 3), num_classes=2)


def test_open_clip_module_in_memory():
    open_clip = pytest.importorskip("open_clip")
    from vpt.clip import create_clip_model
    kwargs = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    torch.manual_seed(0)
    mem = open_clip.create_model("ViT-B-32", pretrained=None, **kwargs)
    with pytest.raises(BackboneError, match="pass name="):
        create_clip_model(mem, ["cat", "dog"])
    model = create_clip_model(mem, ["cat", "dog"], head={"kind": "zeroshot", "templates": ["a photo of a {c}."]},
                              name="open_clip:ViT-B-32", model_kwargs=kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(mem.encode_image(x), dim=-1)
        torch.testing.assert_close(torch.nn.functional.normalize(model.encode_image(x), dim=-1), feats,
                                   rtol=1e-5, atol=1e-5)
    assert model.backbone.identity()["weights_id"].startswith("memory:")
