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
# open_clip's attention is torch's MultiheadAttention (no attn.proj submodule to wrap): Houlsby refuses it.
# E2VPT's key-value prompts need key/value prefixes: pre-norm Eva takes them (issue #39's Eva blocks), post-norm
# Eva does not (test_e2vpt_refuses_a_backbone_without_key_value_prefixes)
REFUSED = {("open_clip", "adapter_houlsby")}
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
])
def test_method_on_a_backbone_without_its_layers_names_them(bb, method, match):
    from vpt.errors import BackboneError
    if bb not in MATRIX.backbones:
        pytest.skip(f"{bb} not installed")
    with pytest.raises((ConfigError, BackboneError), match=match):  # a missing capability: BackboneError
        build(bb, method)


def test_e2vpt_refuses_a_backbone_without_key_value_prefixes():
    """Post-norm Eva blocks take no key/value prefixes, so E2VPT's key-value prompts are refused with the reason."""
    from vpt.errors import BackboneError
    from helpers import BACKBONES
    if "eva02_rope" not in MATRIX.backbones:
        pytest.skip("timm's Eva not available")
    name, kw = BACKBONES["eva02_rope"]
    bb = vpt.create_backbone(name, pretrained=False, init_seed=0, model_kwargs=dict(kw, use_post_norm=True))
    with pytest.raises((ConfigError, BackboneError), match="method 'e2vpt'.*cannot be used with backbone.*EvaBlockPostNorm"):
        vpt.create_model(bb, prompt=MATRIX.prompts[METHOD_PROMPTS["e2vpt"]], num_classes=3, method=METHODS["e2vpt"])


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


@pytest.mark.slow
@pytest.mark.parametrize("method,prompt", [("convpass", None), ("repadapter", None),
                                           ("e2vpt", {"kind": "vpt_shallow", "num_tokens": 2})])
def test_vpt_train_evaluates_and_reloads_each_method(tmp_path, method, prompt):
    """The new rows through ``vpt train`` / ``vpt eval`` / from_pretrained: the reloaded artifact computes what
    the trained model's best tensors compute (a merged RepAdapter too)."""
    data = make_image_folder(tmp_path / "data", per_class=4)
    cfg = {"model": {"backbone": {"name": TINY_VIT_NAME, "pretrained": False, "model_kwargs": dict(TINY_VIT)},
                     "prompt": prompt, "method": METHODS[method]},
           "optim": {"opt": "adamw", "lr": 0.01},
           "train": {"epochs": 1, "batch_size": 6, "workers": 0, "log_interval": 0}}
    loaded = train_eval_reload(cfg, data, tmp_path)
    assert loaded.method_config.kind == METHODS[method]["kind"]
    trained = {n: p for n, p in loaded.named_parameters() if p.requires_grad and not n.startswith("head.")}
    assert trained and any(p.abs().sum() > 0 for p in trained.values())
    if loaded.method.mergeable:
        x = images()
        with torch.no_grad():
            before = loaded(x)
            torch.testing.assert_close(loaded.merge()(x), before, rtol=1e-5, atol=1e-5)


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


# --- Convpass: the reference's bypass, the class token as a 1x1 image ---------------------------------------
def test_convpass_block_is_the_reference_formula():
    """Block 0 with Convpass equals x + attn(n1) + s * bypass(n1), then the same beside the MLP, where bypass
    is written out as the reference does it: the patch grid through the 3x3 conv, the class token through the
    same conv as a 1x1 image (padding 1)."""
    import torch.nn.functional as F
    model = perturb_trainable(vpt.create_model(MATRIX.fresh("vit"), num_classes=3,
                                               method={"kind": "convpass", "bottleneck": 4, "scale": 0.5,
                                                       "dropout": 0.0, "xavier_conv": True}))
    blk, s = model.backbone.model.blocks[0], 0.5

    def quick_gelu(z):
        return z * torch.sigmoid(1.702 * z)

    def bypass(cp, x):  # the reference's Convpass.forward, on a 4x4 grid behind one class token
        B = x.shape[0]
        z = quick_gelu(cp.down(x))
        patch = z[:, 1:].reshape(B, 4, 4, 4).permute(0, 3, 1, 2)
        patch = F.conv2d(patch, cp.conv.weight, cp.conv.bias, padding=1).permute(0, 2, 3, 1).reshape(B, 16, 4)
        cls = z[:, :1].reshape(B, 1, 1, 4).permute(0, 3, 1, 2)
        cls = F.conv2d(cls, cp.conv.weight, cp.conv.bias, padding=1).permute(0, 2, 3, 1).reshape(B, 1, 4)
        return cp.up(quick_gelu(torch.cat([cls, patch], dim=1)))

    x = images()
    with torch.no_grad():
        h, _ = model.backbone.embed(x)
        n1 = blk.norm1.base(h)
        h1 = h + blk.attn(n1) + s * bypass(blk.ls1.bypass, n1)
        n2 = blk.norm2.base(h1)
        want = h1 + blk.mlp(n2) + s * bypass(blk.ls2.bypass, n2)
        got = model.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True,
                                          return_prefix_tokens=True)[0]
    torch.testing.assert_close(torch.cat([got[1], got[0]], dim=1), want, rtol=1e-5, atol=1e-5)


def test_convpass_refuses_a_backbone_of_any_input_size():
    from helpers import TINY_VIT
    with pytest.raises(ConfigError, match="convolves over the fixed patch grid.*dynamic_img_size"):
        vpt.create_model({"name": TINY_VIT_NAME, "pretrained": False,
                          "model_kwargs": dict(TINY_VIT, dynamic_img_size=True)}, num_classes=3, method="convpass")


# --- RepAdapter: group-wise, mergeable -----------------------------------------------------------------------
def test_repadapter_up_projection_is_group_wise():
    model = perturb_trainable(build("vit", "repadapter"))
    w = model.method.modules()[0]
    dense = w.up.dense().detach()  # (D, r): group g's outputs read group g's hidden units only
    assert dense.shape == (32, 4)
    assert torch.count_nonzero(dense[:16, 2:]) == 0 and torch.count_nonzero(dense[16:, :2]) == 0
    z = torch.randn(2, 5, 4)
    torch.testing.assert_close(w.up(z), z @ dense.T + w.up.bias, rtol=1e-5, atol=1e-6)
    roles = model.param_roles()  # the adapter's biases are biases (no weight decay)
    assert {r for n, r in roles.items() if n.endswith("norm1.up.bias")} == {("adapter", "bias")}
    with pytest.raises(ConfigError, match="bottleneck.*not a multiple of groups"):
        vpt.create_model(MATRIX.fresh("vit"), num_classes=3, method={"kind": "repadapter", "bottleneck": 5})


# --- E2VPT: what it defines instead of a zero start ----------------------------------------------------------
def _e2vpt(pruned_tokens=None, pruned_segments=None, seed=0, prompt="vpt_deep"):
    torch.manual_seed(seed)
    return vpt.create_model(MATRIX.fresh("vit"), prompt=MATRIX.prompts[prompt], num_classes=3,
                            method=dict(METHODS["e2vpt"], pruned_tokens=pruned_tokens, pruned_segments=pruned_segments))


def test_e2vpt_pruned_tokens_and_segments_are_zeros_and_get_no_gradient():
    S = METHODS["e2vpt"]["segments"]
    pruned = _e2vpt(pruned_tokens=[1], pruned_segments=[0 * S + 2])
    plain = _e2vpt()
    with torch.no_grad():  # the same prompts with token 1 zero and channels c % S == 2 of token 0 zero
        for p in plain.prompt.visual.prompts.values():
            p[1] = 0
            p[0, 2::S] = 0
    x = images()
    for fast in (True, False):
        pruned.fast = plain.fast = fast
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), plain(x), rtol=1e-5, atol=1e-5)
    pruned(x).sum().backward()
    for p in pruned.prompt.visual.prompts.values():
        assert torch.count_nonzero(p.grad[1]) == 0 and torch.count_nonzero(p.grad[0, 2::S]) == 0
        assert torch.count_nonzero(p.grad[0, 1::S]) > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pruned.prompt.keyvalue.prefix.values())


def test_e2vpt_importance_is_the_mask_gradient_and_prune_masks_the_lowest(tmp_path):
    import torch.nn.functional as F

    from vpt.methods.e2vpt import prune
    model = perturb_trainable(_e2vpt()).double()
    x, y = images(4).double(), torch.tensor([0, 1, 2, 0])
    out = prune(model, [(x, y)], token_share=0.5, segment_share=0.5)
    prompts = list(model.prompt.visual.prompts.values())

    def loss_with_token_scaled(j, f):  # token j of every prompted block times f: its mask at f
        saved = [p.detach().clone() for p in prompts]
        with torch.no_grad():
            for p in prompts:
                p[j] *= f
            loss = F.cross_entropy(model(x), y)
            for p, s in zip(prompts, saved):
                p.copy_(s)
        return loss

    P, eps = 2, 1e-5
    # the masks were applied by prune(): undo them to check the scores at mask 1
    keep = model.prompt.keep
    model.prompt.keep = None
    for j in range(P):
        fd = (loss_with_token_scaled(j, 1 + eps) - loss_with_token_scaled(j, 1 - eps)) / (2 * eps)
        torch.testing.assert_close(out["token_scores"][j].double(), fd.abs(), rtol=1e-3, atol=1e-7)
    model.prompt.keep = keep
    low = int(torch.argmin(out["token_scores"]))
    assert out["pruned_tokens"] == [low] and model.method_config.pruned_tokens == [low]
    S = METHODS["e2vpt"]["segments"]
    kept = 1 - low
    lowest = sorted(range(S), key=lambda s: float(out["segment_scores"][kept, s]))[:S // 2]
    assert out["pruned_segments"] == sorted(kept * S + s for s in lowest)
    # the masks travel in the artifact's config
    model.float().save_pretrained(str(tmp_path))
    loaded = vpt.from_pretrained(str(tmp_path))
    assert loaded.method_config.pruned_tokens == [low]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()), model(images()), rtol=0, atol=0)


def test_e2vpt_shared_key_values_are_one_tensor_per_block(tmp_path):
    torch.manual_seed(0)
    model = perturb_trainable(vpt.create_model(MATRIX.fresh("vit"), prompt=MATRIX.prompts["vpt_deep"], num_classes=3,
                                               method=dict(METHODS["e2vpt"], share_kv=True)))
    k, v = model.prompt.kv(1, 2)
    assert k.shape == (2, 2, 32) and torch.equal(k, v)  # num_kv 2 keys = values, width A = 32
    assert sorted(n for n, _ in model.prompt.keyvalue.named_parameters()) == ["prefix.0", "prefix.1", "prefix.2"]
    x = images()
    with torch.no_grad():
        fast = model(x)
        model.fast = False
        torch.testing.assert_close(model(x), fast, rtol=1e-5, atol=1e-5)
    model.save_pretrained(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(vpt.from_pretrained(str(tmp_path))(x), fast, rtol=0, atol=0)


@pytest.mark.parametrize("prompt", ["none", "vpt_prefix", "pixel_pad"])
def test_e2vpt_refuses_prompts_it_cannot_take(prompt):
    with pytest.raises(ConfigError, match="'e2vpt' adds key-value prompts and pruning to VPT token prompts.*set "
                                          "model.prompt to \\{kind: vpt_deep\\}"):
        build("vit", "e2vpt", prompt)


def test_e2vpt_bad_inputs():
    from vpt.methods.e2vpt import prune
    with pytest.raises(ConfigError, match="segments=5 does not divide the width 32"):
        vpt.create_model(MATRIX.fresh("vit"), prompt=MATRIX.prompts["vpt_deep"], num_classes=3,
                         method={"kind": "e2vpt", "segments": 5})
    with pytest.raises(ConfigError, match=r"pruned_tokens / pruned_segments \[7\] out of range for 2 prompt tokens"):
        _e2vpt(pruned_tokens=[7])
    with pytest.raises(ConfigError, match="prune\\(\\) needs a model with method 'e2vpt', this one has ssf"):
        prune(build("vit", "ssf"), [])
    with pytest.raises(ConfigError, match="got no batches"):
        prune(_e2vpt(), [])


@pytest.mark.parametrize("method", ["convpass", "repadapter"])
def test_method_names_the_block_layers_it_needs(method):
    bb = MATRIX.fresh("vit")
    for blk in bb.block_modules():
        blk.norm1 = blk.norm2 = None  # blocks without the norms these methods read
    with pytest.raises(ConfigError, match=rf"method '{method}' needs each block's norm before the attn \(norm1 or "
                                          rf"ln_1\), which this backbone's blocks \(Block"):
        vpt.create_model(bb, num_classes=3, method=METHODS[method])
