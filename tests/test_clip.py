"""PromptedCLIP: visual prompts in the frozen open_clip image encoder, text-derived heads, CoOp text context,
artifacts, local weights files, and the CLIP_benchmark evaluate() contract."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_image_folder

import vpt
from vpt.config import ConfigError

open_clip = pytest.importorskip("open_clip")
from vpt import zeroshot as zs  # noqa: E402
from vpt.clip import PromptedCLIP, create_clip_model  # noqa: E402

TINY_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
CLASSES = ("cat", "dog", "golden_retriever", "frog", "red_car")
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}."]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("clip")
    data = make_image_folder(root / "data", classes=CLASSES, per_class=3)
    mem = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=5, model_kwargs=TINY_CLIP)
    weights = str(root / "clip.safetensors")
    save_file({k: v.contiguous() for k, v in mem.model.state_dict().items()}, weights)
    adapter = vpt.create_backbone("open_clip:ViT-B-32", weights=weights, model_kwargs=TINY_CLIP)
    loader = torch.utils.data.DataLoader(
        __import__("torchvision").datasets.ImageFolder(data, transform=zs.clip_preprocess(adapter)), batch_size=8)
    images, targets = map(torch.cat, zip(*loader))
    return {"root": root, "data": data, "weights": weights, "mem": mem, "adapter": adapter, "loader": loader,
            "images": images, "targets": targets}


@pytest.fixture(scope="module")
def ref(env):
    """vpt's zero-shot evaluation of the unprompted model with TEMPLATES."""
    return zs.evaluate_folder(env["adapter"], env["data"], templates=TEMPLATES)


def names():
    return sorted(CLASSES)


def clip_model(env, **kw):
    kw.setdefault("head", {"kind": "zeroshot", "templates": TEMPLATES})
    return create_clip_model(env["adapter"], names(), **kw)


def sgd_step(model, x, y, lr=0.5):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    return loss


# --- heads: zero-shot and its linear initialisation -------------------------------------------------
def test_zeroshot_head_equals_zeroshot_evaluation(env, ref):
    model = clip_model(env)
    with torch.no_grad():
        logits = model(env["images"])
    assert torch.equal(logits.argmax(1), ref["logits"].argmax(1))
    scale = env["adapter"].model.logit_scale.exp().item()
    torch.testing.assert_close(logits, ref["logits"] * scale / 100.0, rtol=1e-5, atol=1e-5)  # CLIP's own scale
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []


@pytest.mark.parametrize("prompt", [None, {"kind": "pixel_pad", "width": 4, "init_std": 0.0},
                                    {"kind": "vpt_deep", "num_tokens": 0}])
def test_linear_init_head_step0_equals_zeroshot_exactly(env, ref, prompt):
    zero = clip_model(env)
    lin = clip_model(env, prompt=prompt, head={"kind": "linear_init", "templates": TEMPLATES})
    with torch.no_grad():
        lz, ll = zero(env["images"]), lin(env["images"])
    assert torch.equal(lz, ll)  # bit-identical logits before the first step
    acc = (ll.argmax(1) == env["targets"]).double().mean().item()
    assert acc == ref["metrics"]["acc1"]
    trainable = {n for n, p in lin.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    before = {n: p.detach().clone() for n, p in lin.named_parameters()}
    sgd_step(lin, env["images"], env["targets"])
    changed = {n for n, p in lin.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in trainable if before[n].numel()}  # head (and prompts) move, frozen CLIP not


def test_visual_prompts_train_through_frozen_clip(env):
    model = clip_model(env, prompt={"kind": "vpt_deep", "num_tokens": 2})
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.train()
    F.cross_entropy(model(env["images"]), env["targets"]).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"prompt.prompts.0", "prompt.prompts.1"} and all(p.grad.abs().sum() > 0 for p in model.prompt.parameters())
    assert not model.backbone.training  # frozen towers stay in eval
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.backbone.named_parameters())


# --- CoOp text context --------------------------------------------------------------------------------
@pytest.mark.parametrize("position,sentence", [("end", "a photo of a {c}."), ("middle", "a photo {c} of a."),
                                               ("front", "{c} a photo of a.")])
def test_text_context_init_reproduces_encode_text_exactly(env, position, sentence):
    model = clip_model(env, text={"init": "a photo of a", "position": position})
    assert model.text_prompt.num_tokens == 4
    texts = [sentence.format(c=n.replace("_", " ")) for n in names()]
    with torch.no_grad():
        ref = F.normalize(env["adapter"].model.encode_text(model.tokenizer(texts)), dim=-1)
        assert torch.equal(model.text_features(), ref)


def test_text_context_matches_template_classifier(env):
    coop = clip_model(env, text={"init": "a photo of a"})
    zero = clip_model(env, head={"kind": "zeroshot", "templates": ["a photo of a {c}."]})
    with torch.no_grad():
        torch.testing.assert_close(coop(env["images"]), zero(env["images"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("class_specific", [False, True])
def test_text_context_only_context_and_prompts_get_gradients(env, class_specific):
    model = clip_model(env, prompt={"kind": "pixel_pad", "width": 4},
                       text={"num_tokens": 3, "class_specific": class_specific, "position": "middle"})
    C, W = len(CLASSES), env["adapter"].model.token_embedding.weight.shape[1]
    assert tuple(model.text_prompt.ctx.shape) == ((C, 3, W) if class_specific else (3, W))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"text_prompt.ctx", "prompt.pad_up", "prompt.pad_down", "prompt.pad_left", "prompt.pad_right"}
    model.train()
    F.cross_entropy(model(env["images"]), env["targets"]).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    g = model.text_prompt.ctx.grad
    assert (g.flatten(1) if class_specific else g).abs().sum(-1).gt(0).all()  # every class's context learns
    model.zero_grad()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sgd_step(model, env["images"], env["targets"], lr=1.0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_text_context_eval_cache_follows_updates(env):
    model = clip_model(env, text={"num_tokens": 2})
    with torch.no_grad():
        a = model(env["images"])
        assert torch.equal(model(env["images"]), a)
        model.text_prompt.ctx.add_(0.5)
        assert not torch.equal(model(env["images"]), a)


# --- artifacts and local weights ----------------------------------------------------------------------
ARTIFACT_CASES = {
    "zeroshot_vpt_deep": dict(prompt={"kind": "vpt_deep", "num_tokens": 2}),
    "linear_init_pixel": dict(prompt={"kind": "pixel_pad", "width": 4},
                              head={"kind": "linear_init", "templates": TEMPLATES}),
    "coop_csc_shallow": dict(prompt={"kind": "vpt_shallow", "num_tokens": 2},
                             text={"num_tokens": 2, "class_specific": True, "position": "front"}),
}


@pytest.mark.parametrize("case", list(ARTIFACT_CASES))
def test_artifact_round_trip(env, tmp_path, case):
    from safetensors.torch import load_file
    model = clip_model(env, **ARTIFACT_CASES[case])
    sgd_step(model, env["images"], env["targets"])
    model.save_pretrained(str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path / "a")) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["model_type"] == "clip" and cfg["class_names"] == names()
    assert cfg["backbone"]["weights_id"].startswith("file:") and cfg["backbone"]["model_kwargs"] == TINY_CLIP
    loaded = vpt.from_pretrained(str(tmp_path / "a"))
    assert isinstance(loaded, PromptedCLIP)
    with torch.no_grad():
        assert torch.equal(loaded(env["images"]), model(env["images"]))
    assert loaded.data_config == model.data_config


def test_local_weights_file_equals_in_memory_model(env):
    mem, disk = env["mem"], env["adapter"]
    assert disk.weights_id().startswith("file:")
    text = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat.", "a dog"])
    with torch.no_grad():
        assert torch.equal(mem.model.encode_image(env["images"]), disk.model.encode_image(env["images"]))
        assert torch.equal(mem.model.encode_text(text), disk.model.encode_text(text))
        kw = dict(prompt={"kind": "vpt_deep", "num_tokens": 2}, head={"kind": "zeroshot", "templates": TEMPLATES})
        torch.manual_seed(0)
        a = create_clip_model(mem, names(), **kw)
        torch.manual_seed(0)
        b = create_clip_model(disk, names(), **kw)
        assert torch.equal(a(env["images"]), b(env["images"]))


# --- CLIP_benchmark's evaluate() scores the prompted model unchanged ----------------------------------
def _cb_zero_shot_classifier(model, tokenizer, classnames, templates, device):
    """clip_benchmark/metrics/zeroshot_classification.py, faithfully re-implemented."""
    with torch.no_grad():
        zeroshot_weights = []
        for classname in classnames:
            texts = [template.format(c=classname) for template in templates]
            texts = tokenizer(texts).to(device)
            class_embeddings = model.encode_text(texts)
            class_embedding = F.normalize(class_embeddings, dim=-1).mean(dim=0)
            class_embedding /= class_embedding.norm()
            zeroshot_weights.append(class_embedding)
        zeroshot_weights = torch.stack(zeroshot_weights, dim=1).to(device)
    return zeroshot_weights


def _cb_accuracy(output, target, topk=(1,)):
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    # CLIP_benchmark wraps the 1-element array in float(); new numpy needs .item()
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy().item() / n for k in topk]


def _cb_run_classification(model, classifier, dataloader, device):
    pred, true = [], []
    with torch.no_grad():
        for images, target in dataloader:
            image_features = model.encode_image(images.to(device))
            image_features = F.normalize(image_features, dim=-1)
            logits = 100. * image_features @ classifier
            true.append(target.cpu())
            pred.append(logits.float().cpu())
    return torch.cat(pred), torch.cat(true)


def _cb_balanced_accuracy(y_true, y_pred):  # sklearn.metrics.balanced_accuracy_score
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def cb_evaluate(model, dataloader, tokenizer, classnames, templates, device):
    classifier = _cb_zero_shot_classifier(model, tokenizer, classnames, templates, device)
    logits, target = _cb_run_classification(model, classifier, dataloader, device)
    pred = logits.argmax(axis=1)
    if len(classnames) >= 5:
        acc1, acc5 = _cb_accuracy(logits, target, topk=(1, 5))
    else:
        acc1, = _cb_accuracy(logits, target, topk=(1,))
        acc5 = float("nan")
    mean_per_class_recall = _cb_balanced_accuracy(target.numpy(), pred.numpy())
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall}


def test_clip_benchmark_evaluate_scores_prompted_model(env, ref):
    torch.manual_seed(1)
    model = clip_model(env, prompt={"kind": "vpt_deep", "num_tokens": 2})
    [p.data.mul_(20) for p in model.prompt.parameters()]  # make the prompts matter for this random model
    classnames = [n.replace("_", " ") for n in names()]
    with torch.no_grad():
        base = env["adapter"].model.encode_image(env["images"])
        prompted = model.encode_image(env["images"])
    assert not torch.allclose(base, prompted, atol=1e-3)  # the benchmark sees the *prompted* encoder
    result = cb_evaluate(model, env["loader"], model.tokenizer, classnames, TEMPLATES, "cpu")
    with torch.no_grad():
        logits = model(env["images"])
    ours, _ = zs.classification_metrics(logits, env["targets"], classnames)
    assert result["acc1"] == ours["acc1"] and result["acc5"] == ours["acc5"]
    assert result["mean_per_class_recall"] == pytest.approx(ours["mean_per_class_recall"], abs=1e-12)
    plain = cb_evaluate(env["adapter"].model, env["loader"], model.tokenizer, classnames, TEMPLATES, "cpu")
    assert plain["acc1"] == ref["metrics"]["acc1"] and plain["acc5"] == ref["metrics"]["acc5"]


# --- errors -------------------------------------------------------------------------------------------
def test_clip_errors(env):
    with pytest.raises(ConfigError, match="needs an open_clip backbone"):
        create_clip_model("timm:vit_tiny_patch16_224", names(), pretrained=False,
                          model_kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2))
    with pytest.raises(ConfigError, match="needs head.kind zeroshot"):
        clip_model(env, head="linear_init", text={"num_tokens": 2})
    with pytest.raises(ConfigError, match="did you mean 'linear_init'"):
        clip_model(env, head="linear_int")
    with pytest.raises(ConfigError, match="text prompt"):
        vpt.create_model(env["adapter"], prompt="coop", num_classes=2)
    with pytest.raises(ConfigError, match="is 4 tokens but text.num_tokens is 3"):
        clip_model(env, text={"init": "a photo of a", "num_tokens": 3})
    with pytest.raises(ConfigError, match="does not fit the text context length"):
        create_clip_model(env["adapter"], ["word " * 70], text={"num_tokens": 16})
    with pytest.raises(ConfigError, match="has no '{c}'"):
        clip_model(env, head={"kind": "zeroshot", "templates": ["a photo"]})


def test_train_backbone_unfreezes_only_the_image_tower(env):
    model = create_clip_model(vpt.create_backbone("open_clip:ViT-B-32", weights=env["weights"],
                                                  model_kwargs=TINY_CLIP), names(), head="linear", train_backbone=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "head.weight" in trainable and "backbone.model.visual.proj" in trainable
    assert all(n.startswith(("head.", "backbone.model.visual.")) for n in trainable)
    assert model.templates == []  # a random linear head encodes no templates


def test_encode_image_fast_path_equals_reference(env):
    """encode_image computes only the class token in the last block, and equals the full (reference) path."""
    torch.manual_seed(2)
    model = clip_model(env, prompt={"kind": "vpt_deep", "num_tokens": 2}).eval()
    [p.data.mul_(20) for p in model.prompt.parameters()]
    assert model.fast and model.reads_prefix_only()
    with torch.no_grad():
        assert model.head_features(env["images"][:2]).shape[1] == model.backbone.layout.num_prefix
        fast = model.encode_image(env["images"])
        model.fast = False
        reference = model.encode_image(env["images"])
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
