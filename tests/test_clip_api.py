"""PromptedCLIP answers like open_clip's CLIP: checks adapted from open_clip's own tests
(tests/test_inference_simple.py: encode_image / encode_text / text probabilities), its training step
(open_clip_train/train.py: ``model(images, texts)`` -> ClipLoss / SigLipLoss with ``output_dict``) and its
zero-shot evaluation (open_clip_train/zero_shot.py: ``build_zero_shot_classifier`` + ``model(image=...)``).

Each runs on a plain open_clip CLIP, on a CustomTextCLIP (``force_custom_text``) and on a SigLIP-style
model with ``logit_bias``; with zero prompts the prompted model must equal the library model exactly,
and with prompts the same code must train the prompts only."""
import math

import pytest
import torch
import torch.nn.functional as F

import vpt

open_clip = pytest.importorskip("open_clip")
from vpt.clip import PromptedCLIP, create_clip_model  # noqa: E402

TINY = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
FAMILIES = {
    "clip": TINY,
    "custom_text": dict(TINY, force_custom_text=True),
    "siglip_bias": dict(TINY, init_logit_bias=-10.0),
}
PROMPTS = {
    "none": None,
    "vpt_deep": {"kind": "vpt_deep", "num_tokens": 2},
    "vpt_prefix": {"kind": "vpt_prefix", "num_tokens": 2},
    "pixel_pad": {"kind": "pixel_pad", "width": 4},
}
ZERO = {"vpt_deep": {"kind": "vpt_deep", "num_tokens": 0}, "pixel_pad": {"kind": "pixel_pad", "width": 4, "init_std": 0.0}}
CLASSES = ["a diagram", "a dog", "a cat"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    adapter = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=3, model_kwargs=FAMILIES[request.param])
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    text = open_clip.get_tokenizer("ViT-B-32")(["a diagram", "a dog", "a cat", "a red car"])
    return request.param, adapter, images, text


def build(adapter, prompt=None, **kw):
    kw.setdefault("head", "linear")
    return create_clip_model(adapter, CLASSES, prompt=prompt, **kw)


# --- open_clip's tests/test_inference_simple.py ----------------------------------------------------------
@pytest.mark.parametrize("zero", [None, *ZERO])
def test_inference_simple_equals_open_clip(family, zero):
    _, adapter, images, text = family
    lib = adapter.model
    model = build(adapter, ZERO.get(zero))
    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(text)
        text_probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)
        assert torch.equal(image_features, lib.encode_image(images))
        assert torch.equal(text_features, lib.encode_text(text))
        assert torch.equal(text_probs, (100.0 * lib.encode_image(images) @ lib.encode_text(text).T).softmax(dim=-1))
        for normalize in (False, True):
            assert torch.equal(model.encode_image(images, normalize=normalize),
                               lib.encode_image(images, normalize=normalize))
            assert torch.equal(model.encode_text(text, normalize=normalize), lib.encode_text(text, normalize=normalize))


@pytest.mark.parametrize("output_dict", [False, True])
def test_forward_image_text_equals_open_clip(family, output_dict):
    name, adapter, images, text = family
    lib = adapter.model
    model = build(adapter)
    model.output_dict = lib.output_dict = output_dict
    try:
        with torch.no_grad():
            ours, theirs = model(images, text), lib(images, text)
            assert type(ours) is type(theirs)
            if output_dict:
                assert set(ours) == set(theirs) == ({"image_features", "text_features", "logit_scale"} |
                                                     ({"logit_bias"} if name == "siglip_bias" else set()))
                pairs = [(ours[k], theirs[k]) for k in theirs]
            else:
                assert len(ours) == len(theirs) == (4 if name == "siglip_bias" else 3)
                pairs = list(zip(ours, theirs))
            for a, b in pairs:
                assert torch.equal(a, b)
            # keyword calls and one tower at a time, as open_clip allows
            only_text = model(text=text)
            only_image = model(image=images)
            first = (lambda o, k, i: o[k] if output_dict else o[i])
            assert first(only_text, "image_features", 0) is None
            assert torch.equal(first(only_text, "text_features", 1), lib.encode_text(text, normalize=True))
            assert torch.equal(first(only_image, "image_features", 0), lib.encode_image(images, normalize=True))
            for a, b in zip(model.get_logits(images, text), lib.get_logits(images, text)):
                assert torch.equal(a, b)
    finally:
        lib.output_dict = False
    assert model.logit_scale is lib.logit_scale and model.logit_bias is getattr(lib, "logit_bias", None)
    # positional images alone: the classifier's logits (what vpt's trainer calls)
    with torch.no_grad():
        assert model(images).shape == (4, len(CLASSES))


def test_visual_is_the_prompted_image_tower(family):
    _, adapter, images, text = family
    model = build(adapter, PROMPTS["vpt_deep"])
    lib = adapter.model
    visual = model.visual
    assert visual.prompt is model.prompt
    visual_params = {id(p) for p in visual.parameters()}
    assert {id(p) for p in model.prompt.parameters()} <= visual_params  # prompts inside .visual
    assert {id(p) for p in lib.visual.parameters()} <= visual_params
    text_params = {id(p) for p in model.text.parameters()}
    assert text_params and not text_params & visual_params  # the text tower is not part of .visual
    assert text_params == {id(p) for n, p in lib.named_parameters() if not n.startswith("visual.")
                           and n not in ("logit_scale", "logit_bias")}
    with torch.no_grad():
        torch.testing.assert_close(visual(images), model.encode_image(images), rtol=0, atol=0)
        assert not torch.allclose(visual(images), lib.visual(images))  # the prompts act
    assert visual.output_dim == lib.visual.output_dim and visual.image_size == lib.visual.image_size
    assert open_clip.get_model_preprocess_cfg(model) == open_clip.get_model_preprocess_cfg(lib)
    assert open_clip.get_model_tokenize_cfg(model) == open_clip.get_model_tokenize_cfg(lib)
    # open_clip's transforms from the prompted model's config preprocess like the library model's
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image
    img = Image.new("RGB", (40, 50), (120, 30, 200))
    ours = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False)(img)
    theirs = image_transform_v2(PreprocessCfg(**lib.visual.preprocess_cfg), is_train=False)(img)
    assert ours.shape == (3, 32, 32) and torch.equal(ours, theirs)


# --- open_clip_train/train.py: one contrastive step, unchanged -------------------------------------------
def _open_clip_train_step(model, loss, optimizer, images, texts):
    """train_one_epoch's inner step (no accumulation, no autocast), as open_clip_train writes it."""
    model.train()
    optimizer.zero_grad()
    model_out = model(images, texts)
    logit_scale = model_out["logit_scale"]
    losses = loss(**model_out, output_dict=True)
    total_loss = sum(losses.values())
    losses["loss"] = total_loss
    total_loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return total_loss, logit_scale


@pytest.mark.parametrize("prompt", [p for p in PROMPTS if p != "none"])
def test_open_clip_contrastive_step_trains_prompts(family, prompt):
    name, adapter, images, text = family
    if prompt == "vpt_prefix" and adapter.prefix_refusal:
        pytest.skip(adapter.prefix_refusal)
    torch.manual_seed(0)
    model = build(adapter, PROMPTS[prompt])
    model.output_dict = True
    from open_clip.loss import ClipLoss, SigLipLoss
    loss = SigLipLoss() if name == "siglip_bias" else ClipLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    total, scale = _open_clip_train_step(model, loss, optimizer, images, text)
    assert torch.isfinite(total) and scale.ndim == 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("prompt.") for n in changed)  # only prompts move; CLIP stays frozen
    assert not model.backbone.training and not model.visual.backbone.training  # frozen towers stay in eval
    # the second step's loss moved: the prompts are what the loss trains
    with torch.no_grad():
        model.eval()
        after = sum(loss(**model(images, text), output_dict=True).values())
    assert not torch.equal(after, total.detach())


# --- open_clip_train/zero_shot.py: build_zero_shot_classifier + model(image=...) --------------------------
def test_open_clip_zero_shot_eval_runs_on_prompted_model(family):
    _, adapter, images, _ = family
    model = build(adapter, PROMPTS["vpt_deep"])
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    templates = [lambda c: f"a photo of a {c}.", lambda c: f"a drawing of a {c}."]
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(model, tokenizer=tokenizer, classnames=CLASSES,
                                                          templates=templates, num_classes_per_batch=2, device="cpu")
        reference = open_clip.build_zero_shot_classifier(adapter.model, tokenizer=tokenizer, classnames=CLASSES,
                                                         templates=templates, num_classes_per_batch=2, device="cpu")
        assert torch.equal(classifier, reference)  # the text tower is the library's
        output = model(image=images)
        image_features = output["image_features"] if isinstance(output, dict) else output[0]
        logits = 100. * image_features @ classifier
        expected = 100. * F.normalize(model.visual(images), dim=-1) @ classifier
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_artifact_names_and_round_trip_unchanged(family, tmp_path):
    _, adapter, images, text = family
    model = build(adapter, PROMPTS["vpt_deep"])
    assert sorted(model.trainable_state_dict()) == ["head.bias", "head.weight", "prompt.prompts.0", "prompt.prompts.1"]
    model.save_pretrained(str(tmp_path / "a"))
    loaded = vpt.from_pretrained(str(tmp_path / "a"), backbone=adapter)
    assert isinstance(loaded, PromptedCLIP) and loaded.backbone is adapter
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
