"""model.method: the vision PEFT methods peft lacks (vpt.methods) on the backbone matrix: identity start, own
tensors only in the artifact, prompts beside them, input gradients, FX and forward_intermediates, merge."""

import pytest
import torch
import yaml

import vpt
from helpers import (MATRIX, MERGEABLE, METHOD_PROMPTS, METHODS, TINY_VIT, TINY_VIT_NAME, make_image_folder,
                     perturb_trainable, train_eval_reload)
from vpt.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

# token families the methods wrap (timm ViT variants, Eva with RoPE, open_clip towers)
FAMILIES = [f for f in ("vit", "vit_reg", "deit_distilled", "eva02_rope", "open_clip") if f in MATRIX.backbones]
# open_clip's attention is torch's MultiheadAttention (no attn.proj submodule to wrap): Houlsby refuses it;
# E2VPT's key-value prompts need key/value prefixes, which Eva's RoPE attention does not take
REFUSED = {("open_clip", "adapter_houlsby"), ("eva02_rope", "e2vpt")}
# methods whose prompts act from the first step (E2VPT: VPT tokens and key-value prompts); the rest start as
# the backbone's exact output
NO_ZERO_START = ("e2vpt",)
CASES = [(b, m) for b in FAMILIES for m in METHODS if (b, m) not in REFUSED]


def build(bb, method, prompt=None, seed=0):
    """The method's matrix row on backbone ``bb``; ``prompt`` None: the prompt the row runs with (none for most)."""
    prompt = METHOD_PROMPTS.get(method, "none") if prompt is None else prompt
    torch.manual_seed(seed)
    return vpt.create_model(MATRIX.fresh(bb), prompt=MATRIX.prompts[prompt], num_classes=3, method=METHODS[method])


def images(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bb,method", CASES)
def test_method_starts_as_the_backbone_and_saves_its_own_tensors(bb, method, tmp_path):
    model = build(bb, method)
    probe = vpt.create_model(MATRIX.fresh(bb), num_classes=3)
    probe.head.load_state_dict(model.head.state_dict())
    x = images()
    with torch.no_grad():
        if method in NO_ZERO_START:  # prompts in attention from the start (its definition: test_e2vpt_*)
            assert not torch.allclose(model(x), probe(x), rtol=1e-3, atol=1e-3)
        else:
            torch.testing.assert_close(model(x), probe(x), rtol=1e-5, atol=1e-5)
    roles = model.param_roles()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(not n.startswith("head.") for n in trainable)
    own_role = "prompt" if method in METHOD_PROMPTS else "adapter"  # E2VPT's tensors are prompts
    if method not in ("bitfit", "partial"):  # added layers or prompts; nothing of the backbone trains
        assert all(roles[n][0] == own_role for n in trainable if not n.startswith("head."))
    perturb_trainable(model).save_pretrained(str(tmp_path))
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(saved) == trainable  # only the method's (and the head's) tensors
    loaded = vpt.from_pretrained(str(tmp_path))
    assert loaded.method_config.kind == METHODS[method]["kind"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("prompt", ["vpt_deep", "vpt_prefix", "vpt_deep_last1", "vpt_deep_gaps"])
def test_method_beside_prompts_fast_path_equals_reference(method, prompt):
    if method == "e2vpt" and prompt == "vpt_prefix":  # not a token prompt: refused (test_e2vpt_refuses_...)
        pytest.skip("e2vpt takes VPT token prompts only")
    model = perturb_trainable(build("vit", method, prompt))
    x = images()
    with torch.no_grad():
        fast = model(x)
        model.fast = False
        ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_method_keeps_input_gradients_fx_and_intermediates(method):
    from timm.models._features_fx import get_graph_node_names
    from torchvision.models.feature_extraction import create_feature_extractor
    model = perturb_trainable(build("vit", method)).eval()
    x = images().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # saliency through the method's layers
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    x = images()
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 3 and inter[0].shape == (2, 32, 4, 4)
    torch.testing.assert_close(model.forward_head(final), model(x), rtol=1e-5, atol=1e-5)
    train_nodes, eval_nodes = get_graph_node_names(model)
    fx = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]])
    with torch.no_grad():
        model.fast = False
        torch.testing.assert_close(list(fx.eval()(x).values())[0], model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_is_exact_and_unmerge_restores_the_backbone(method):
    model = perturb_trainable(build("vit", method))
    before_state = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    x = images()
    with torch.no_grad():
        tuned_out = model(x)
        model.merge()
        torch.testing.assert_close(model(x), tuned_out, rtol=1e-5, atol=1e-5)
        model.unmerge()
        torch.testing.assert_close(model(x), tuned_out, rtol=0, atol=0)
    for k, v in model.backbone.model.state_dict().items():
        assert torch.equal(v, before_state[k]), k


@pytest.mark.parametrize("method", MERGEABLE)
def test_wise_interpolation_between_frozen_and_tuned(method):
    model = perturb_trainable(build("vit", method))
    probe = vpt.create_model(MATRIX.fresh("vit"), num_classes=3)
    probe.head.load_state_dict(model.head.state_dict())
    x = images()
    with torch.no_grad():
        model.merge(alpha=0.0)  # the frozen backbone with the tuned head
        torch.testing.assert_close(model(x), probe(x), rtol=1e-5, atol=1e-5)
        model.unmerge()
        model.merge(alpha=0.5)
        half = model(x)
        model.unmerge()
    assert not torch.allclose(half, probe(x)) and not torch.allclose(half, model(x))


def test_merge_refusals():
    with pytest.raises(ConfigError, match="'adaptformer' cannot merge.*not linear"):
        build("vit", "adaptformer").merge()
    with pytest.raises(ConfigError, match="nothing to fold"):
        build("vit", "partial").merge()
    with pytest.raises(ConfigError, match="'convpass' cannot merge.*QuickGELU"):
        build("vit", "convpass").merge()
    with pytest.raises(ConfigError, match="'e2vpt' cannot merge.*not weights"):
        build("vit", "e2vpt").merge()
    if "eva02_rope" in MATRIX.backbones:  # Eva's qkv has no bias of its own (q / v biases beside it)
        with pytest.raises(ConfigError, match="RepAdapter before block 0's attn cannot merge: attn.qkv has no bias"):
            build("eva02_rope", "repadapter").merge()
    with pytest.raises(ConfigError, match="no method to merge"):
        vpt.create_model(MATRIX.fresh("vit"), num_classes=3).merge()
    model = build("vit", "ssf")
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        model.merge(alpha=2)
    with pytest.raises(ConfigError, match="not merged"):
        model.unmerge()


@pytest.mark.parametrize("bb,method,match", [
    ("open_clip", "adapter_houlsby", r"needs each block's attention output projection \(attn.proj\)"),
    ("cnn", "adaptformer", "has none; use a ViT backbone"),
    ("cnn", "convpass", "has none; use a ViT backbone"),
    ("cnn", "repadapter", "has none; use a ViT backbone"),
    ("eva02_rope", "e2vpt", "method 'e2vpt'.*cannot be used with backbone.*key/value prefixes are not implemented"),
])
def test_method_on_a_backbone_without_its_layers_names_them(bb, method, match):
    from vpt.errors import BackboneError
    if bb not in MATRIX.backbones:
        pytest.skip(f"{bb} not installed")
    with pytest.raises((ConfigError, BackboneError), match=match):  # a missing capability: BackboneError
        build(bb, method)


def test_bad_method_configs():
    bb = MATRIX.fresh("vit")
    with pytest.raises(ConfigError, match="unknown method 'adaptformr'.*did you mean 'adaptformer'"):
        vpt.create_model(bb, num_classes=3, method={"kind": "adaptformr"})
    with pytest.raises(ConfigError, match="last_k is 9 but this backbone has 3 blocks"):
        vpt.create_model(MATRIX.fresh("vit"), num_classes=3, method={"kind": "partial", "last_k": 9})
    with pytest.raises(ConfigError, match="train_backbone unfreezes all of it"):
        vpt.create_model(MATRIX.fresh("vit"), num_classes=3, method="ssf", train_backbone=True)
    with pytest.raises(ConfigError, match="placement"):
        vpt.create_model(MATRIX.fresh("vit"), num_classes=3, method={"kind": "adapter", "placement": "middle"})


def test_adapter_dropout_trains_while_the_backbone_stays_in_eval():
    model = vpt.create_model(MATRIX.fresh("vit"), num_classes=3,
                             method={"kind": "adaptformer", "bottleneck": 4, "dropout": 0.5})
    model.train()
    assert not model.backbone.training
    assert all(m.training for m in model.method.modules())
    model.eval()
    assert not any(m.training for m in model.method.modules())


def test_vpt_list_shows_every_method_with_a_summary(capsys):
    from vpt.cli import main
    from vpt.registry import METHODS as REGISTRY
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for entry in REGISTRY:
        assert f"  {entry.name:<14} {entry.help}" in out and entry.help
    assert "LORA" in out and "ADALORA" in out  # peft's tuners, refused ones with the reason


@pytest.mark.slow
def test_vpt_train_with_a_method_and_a_prompt(tmp_path):
    from vpt.cli import main
    data = make_image_folder(tmp_path / "data", per_class=6)
    cfg = {"model": {"backbone": {"name": TINY_VIT_NAME, "pretrained": False, "model_kwargs": dict(TINY_VIT)},
                     "prompt": {"kind": "vpt_shallow", "num_tokens": 2},
                     "method": {"kind": "adaptformer", "bottleneck": 4}},
           "optim": {"opt": "adamw", "lr": 0.01},
           "train": {"epochs": 1, "batch_size": 8, "workers": 0, "log_interval": 0}}
    loaded = train_eval_reload(cfg, data, tmp_path)
    assert loaded.method_config.kind == "adaptformer" and loaded.prompt_config.kind == "vpt_shallow"
    cfg["model"]["method"] = {"kind": "adaptformer", "bottlenek": 4}
    recipe = tmp_path / "r.yaml"  # the recipe train_eval_reload wrote, edited below
    recipe.write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(recipe), "--data", data, "--output", str(tmp_path / "r2")]) == 2
    cfg["model"]["method"] = "ssf"
    cfg["model"]["type"] = "lora"
    cfg["model"]["prompt"] = None
    recipe.write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(recipe), "--data", data, "--output", str(tmp_path / "r3")]) == 2


@pytest.mark.parametrize("saved,loaded_as,match", [
    ("ssf", "adaptformer", r"missing \[.*adapter.*unexpected \[.*gamma"),
    ("repadapter", "convpass", r"missing \[.*bypass.*unexpected \[.*norm1.*up"),
    ("convpass", "repadapter", r"missing \[.*norm1.*unexpected \[.*bypass"),
    ("e2vpt", "adaptformer", r"missing \[.*adapter.*unexpected \[.*prompt.keyvalue"),
])
def test_an_artifact_of_one_method_loaded_as_another_is_refused(tmp_path, saved, loaded_as, match):
    import json

    from vpt.errors import ArtifactError
    build("vit", saved).save_pretrained(str(tmp_path))
    cfg_path = tmp_path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["method"] = dict(METHODS[loaded_as])
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="does not match its config: " + match):
        vpt.from_pretrained(str(tmp_path))
