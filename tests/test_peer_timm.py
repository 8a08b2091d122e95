"""timm's own model checks (tests/test_models.py: forward, backward, default_cfg names, reset_classifier,
grad checkpointing, forward_intermediates with feature_info) and its data / optimiser helpers
(``timm.data.resolve_model_data_config``, ``timm.optim`` weight decay and layer decay), run on prompted
models over the backbone family x prompt kind matrix."""
import copy
import math

import pytest
import torch

import vpt
from helpers import FAMILIES, KINDS, MATRIX, PROMPTS
from vpt.backbones import create_backbone

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

CASES = MATRIX.cases(FAMILIES, KINDS)  # each family x one prompt of each kind, the refused pairs left out


def build(matrix, bb, prompt, num_classes=5):
    return matrix.model(bb, prompt, num_classes=num_classes)


def inputs(model, batch_size=2):
    return torch.randn((batch_size, *model.pretrained_cfg["input_size"]), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bb,prompt", CASES)
def test_model_forward_and_grad_checkpointing(matrix, bb, prompt):
    """test_model_forward: shape, no NaN; set_grad_checkpointing changes neither outputs nor gradients."""
    model = build(matrix, bb, prompt)
    x = inputs(model)
    model.train()
    outputs = model(x)
    assert outputs.shape == (2, 5) and not torch.isnan(outputs).any()
    grads = torch.autograd.grad(outputs.square().sum(), [p for p in model.parameters() if p.requires_grad])
    model.set_grad_checkpointing()
    assert model.grad_checkpointing
    outputs2 = model(x)
    grads2 = torch.autograd.grad(outputs2.square().sum(), [p for p in model.parameters() if p.requires_grad])
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(outputs, outputs2, rtol=1e-4, atol=1e-5)
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bb,prompt", CASES)
def test_model_backward(matrix, bb, prompt):
    """test_model_backward: every trainable tensor gets a gradient, the frozen backbone none."""
    model = build(matrix, bb, prompt, num_classes=42)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()
    outputs = model(inputs(model))
    outputs.mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, f"gradient presence wrong for {n}"
    assert sum(p.grad.numel() for p in model.parameters() if p.grad is not None) == num_params
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()


@pytest.mark.parametrize("bb,prompt", CASES)
def test_model_default_cfgs(matrix, bb, prompt):
    """test_model_default_cfgs: num_features / head_hidden_size, forward_head(pre_logits), reset_classifier(0),
    classifier and first_conv names in the state dict; and timm's data config is the backbone's."""
    model = build(matrix, bb, prompt).eval()
    assert model.num_classes == 5 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg
    assert cfg == model.pretrained_cfg
    x = inputs(model, 1)
    with torch.no_grad():
        outputs = model.forward_features(x)
        outputs_pre = model.forward_head(outputs, pre_logits=True)
        assert outputs_pre.shape[1] == model.head_hidden_size
        model.reset_classifier(0)
        assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
        pooled = model(x)
    assert pooled.shape == outputs_pre.shape
    torch.testing.assert_close(pooled, outputs_pre, rtol=1e-5, atol=1e-5)  # model(x) may run the class-token fast path
    model.reset_classifier(3)
    assert model.get_classifier().fc.out_features == 3 and model(x).shape == (1, 3)
    for c in [model.pretrained_cfg["classifier"]]:
        assert c + ".weight" in model.state_dict()
    first_conv = cfg["first_conv"]
    for fc in (first_conv,) if isinstance(first_conv, str) else first_conv:
        assert fc + ".weight" in state_dict, f"{fc} not in model params"
    # timm.data reads the backbone's preprocessing (CLIP's mean/std for open_clip, not ImageNet's)
    lib = model.backbone
    data = timm.data.resolve_model_data_config(model)
    assert data["input_size"] == tuple(model.data_config.input_size)
    assert data["mean"] == tuple(model.data_config.mean) and data["std"] == tuple(model.data_config.std)
    if lib.library == "timm":
        ref = timm.data.resolve_model_data_config(lib.model)
        assert {k: v for k, v in data.items() if k != "input_size"} == {k: v for k, v in ref.items() if k != "input_size"}
    else:
        assert data["mean"] == tuple(lib.model.visual.preprocess_cfg["mean"])
    transform = timm.data.create_transform(**data)
    from PIL import Image
    assert transform(Image.new("RGB", (48, 40))).shape == (3, *data["input_size"][1:])


@pytest.mark.parametrize("bb,prompt", CASES)
def test_model_reset_classifier_no_pool(matrix, bb, prompt):
    """test_model_default_cfgs' "forward after removing pooling and classifier": reset_classifier(0, '') (and
    num_classes=0, global_pool='' at build) -> model(x) is the unpooled output with prompts stripped: every image
    token (B, k+N, D) through the library's head path (timm: fc_norm) on token backbones, the (B, C, H, W) map on
    a CNN; a new head then acts per token, as timm's ViT."""
    model = build(matrix, bb, prompt).eval()
    lib, layout = model.backbone.model, model.backbone.layout
    x = inputs(model, 1)
    with torch.no_grad():
        feats = model.forward_features(x)
        model.reset_classifier(0, "")
        assert model.num_classes == 0 and model.head_config.pool == "none"
        unpooled = model(x)
        built = vpt.create_model(model.backbone, prompt=PROMPTS[prompt], num_classes=0, head={"pool": "none"})
        built.load_state_dict(model.state_dict())
        assert torch.equal(built(x), unpooled)
        if layout is not None:  # no prompt token in the output
            assert unpooled.shape == (1, layout.num_prefix + layout.grid[0] * layout.grid[1], model.num_features)
            assert torch.equal(unpooled, model.backbone.unpooled(feats))
        else:
            assert unpooled.dim() == 4 and torch.equal(unpooled, feats)
        if prompt == "none" and bb not in ("open_clip", "deit_distilled"):  # timm's own model, no pooling
            # (open_clip has no reset_classifier; timm's distilled head pools its two class tokens whatever
            # global_pool says)
            ref = copy.deepcopy(lib)
            ref.reset_classifier(0, "")
            torch.testing.assert_close(unpooled, ref.eval()(x), rtol=0, atol=0)
        if layout is None:
            with pytest.raises(vpt.ConfigError, match="feature map.*num_classes=0"):
                model.reset_classifier(3, "")
            return
        model.reset_classifier(3, "")  # a head per token
        assert model(x).shape == (1, unpooled.shape[1], 3)
        model.reset_classifier(3, "token" if layout.has_class_token else "avg")
        assert model(x).shape == (1, 3)


def test_no_pool_refusals():
    """An open_clip tower that pools inside its forward (a timm / ResNet tower) has no unpooled output, and a
    classification task needs pooled features: each refused with the fix."""
    from vpt.tasks.classification import ModelSection, build_model
    pytest.importorskip("open_clip")
    kw = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=(1, 1, 1, 1), width=8, head_width=8),
              text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    resnet_tower = create_backbone("open_clip:RN50", pretrained=False, init_seed=0, model_kwargs=kw)
    with pytest.raises(vpt.backbones.BackboneError, match="ModifiedResNet pools inside its forward.*Use a pooling"):
        vpt.create_model(resnet_tower, num_classes=0, head={"pool": "none"})
    with pytest.raises(vpt.backbones.BackboneError, match="pools inside"):
        vpt.create_model(resnet_tower).reset_classifier(0, "")
    with pytest.raises(vpt.ConfigError, match="pool 'none'.*use pool backbone, cls or avg"):
        build_model(ModelSection(backbone="timm:vit_tiny_patch16_224", head={"kind": "linear", "pool": "none"}), ["a", "b"])


@pytest.mark.parametrize("bb,prompt", [c for c in CASES if c[0] != "cnn"])
def test_model_forward_intermediates(matrix, bb, prompt):
    """test_model_forward_intermediates: feature_info channels / reductions match, final output equals
    forward_features (and with grad checkpointing)."""
    model = build(matrix, bb, prompt).eval()
    feature_info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    modules = dict(model.named_modules())
    assert all(fi["module"] in modules for fi in model.feature_info)
    x = inputs(model, 1)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(feature_info.channels()) == len(intermediates) == model.backbone.layout.depth
        for e, r, o in zip(feature_info.channels(), feature_info.reduction(), intermediates):
            assert o.shape[1] == e
            assert o.shape[2] <= math.ceil(x.shape[-2] / r) + 1 and o.shape[3] <= math.ceil(x.shape[-1] / r) + 1
        torch.testing.assert_close(output, model.forward_features(x), rtol=0, atol=0)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], output, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bb,prompt", [c for c in CASES if c[1] in ("vpt_deep", "vpt_prefix", "vpt_shallow", "pixel_pad")])
def test_layer_decay_puts_prompts_in_their_block_group(matrix, bb, prompt):
    """timm.optim layer decay: block i's prompts share block i's group (and so its lr scale)."""
    from timm.models._manipulate import group_with_matcher
    model = build(matrix, bb, prompt)
    layer_of = group_with_matcher(model.named_parameters(), model.group_matcher(coarse=False), reverse=True)
    bb_ = model.backbone
    block_prefix = "backbone." + bb_.library_prefix
    block_name = {"timm": "blocks.{}.", "open_clip": "transformer.resblocks.{}."}
    for name, layer in model.prompt.parameter_layers().items():
        if layer < 0 or bb_.layout is None:  # pixel prompts: the stem, where the patch embedding is
            first_conv = model.pretrained_cfg["first_conv"]
            assert layer_of["prompt." + name] == layer_of[first_conv + ".weight"]
            continue
        block = block_prefix + block_name[bb_.library].format(layer)
        same = {layer_of[n] for n in layer_of if n.startswith(block)}
        assert same == {layer_of["prompt." + name]}, name
    # and timm.optim uses it: deeper prompts get larger learning-rate scales, no weight decay
    from timm.optim import create_optimizer_v2
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    prompt_params = dict(model.prompt.named_parameters())
    assert all(wd[id(p)] == 0.0 for p in prompt_params.values())  # no_weight_decay names the prompts
    if prompt == "vpt_deep":
        depth = bb_.layout.depth
        scales = [scale[id(prompt_params[f"prompts.{i}"])] for i in range(depth)]
        assert scales == sorted(scales) and scales[0] < scales[-1] < scale[id(model.head.fc.weight)] + 1e-12


def test_prune_intermediate_layers_keeps_prompts_of_kept_blocks(matrix):
    torch.manual_seed(0)  # pruning changes the wrapped model in place (as timm does): not the shared one
    model = vpt.create_model(matrix.fresh("vit"), prompt=PROMPTS["vpt_deep"], num_classes=5).eval()
    x = inputs(model, 1)
    with torch.no_grad():
        _, full = model.forward_intermediates(x, indices=[0, 1])
        take = model.prune_intermediate_layers(indices=[0, 1], prune_head=True)
        assert take == [0, 1] and len(model.backbone.model.blocks) == 2 and model.head is None
        _, pruned = model.forward_intermediates(x, indices=[0, 1])
    for a, b in zip(full, pruned):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
