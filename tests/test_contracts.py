"""The contracts (docs/ARCHITECTURE.md, "Contracts") over every backbone family x every prompt kind of the shared
matrix (helpers.py: tiny random models, built once per session). Which pairs are refused, and with what message,
follows from what the adapters declare (``capabilities``) and what each prompt kind needs (``needs``)."""
import copy
import pickle

import pytest
import torch

import vpt
from helpers import BACKBONES, MATRIX, PROMPTS
from vpt.backbones import BackboneError

PROMPTED = [p for p in PROMPTS if PROMPTS[p] is not None]


def images(n=2, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def library_features(matrix, bb_key, x):
    """(forward_features, pooled pre-logits) computed by the library model itself."""
    lib = matrix.adapter(bb_key).model
    if bb_key == "open_clip":
        return None, lib.encode_image(x, normalize=False)
    f = lib.forward_features(x)
    return f, lib.forward_head(f, pre_logits=True)


# 0. refusals: exactly the pairs the declarations rule out, each naming the kind, the reason and the fix ------
def test_declared_capabilities(matrix):
    """What drives the refusals below: a CNN has no token sequence, and every other family (Eva's RoPE
    attention included) takes every prompt kind (so the matrix cannot shrink unnoticed)."""
    missing = {b: {c for c in ("tokens", "key_values") if not matrix.capable(b, c)} for b in matrix.backbones}
    expected = {b: set() for b in matrix.backbones}
    expected.update(cnn={"tokens", "key_values"})
    assert missing == expected


@pytest.mark.parametrize("bb_key,prompt_key", MATRIX.cases(prompts=PROMPTED, refused=True))
def test_refusals(matrix, bb_key, prompt_key):
    with pytest.raises(BackboneError) as e:
        matrix.model(bb_key, prompt_key, num_classes=3)
    for fragment in matrix.refusal(bb_key, prompt_key):
        assert fragment in str(e.value)
    assert BACKBONES[bb_key][0] in str(e.value)


# 1. Zero prompts == the library model's own output, exactly ---------------------------------------
@pytest.mark.parametrize("bb_key", list(BACKBONES))
def test_no_prompt_is_library_exact(matrix, bb_key):
    model = matrix.model(bb_key, "none", num_classes=3)
    x = images(size=model.data_config.input_size[-1])
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        lib_f, lib_pooled = library_features(matrix, bb_key, x)
    if lib_f is not None:
        torch.testing.assert_close(feats, lib_f, rtol=0, atol=0)
    torch.testing.assert_close(pooled, lib_pooled, rtol=0, atol=0)


@pytest.mark.parametrize("bb_key", [b for b in BACKBONES if MATRIX.capable(b, "tokens")])
@pytest.mark.parametrize("zero", [{"kind": "vpt_deep", "num_tokens": 0}, {"kind": "pixel_pad", "width": 4, "init_std": 0},
                                  {"kind": "pixel_patch", "size": 8, "init_std": 0}])
def test_zero_prompts_are_library_exact(matrix, bb_key, zero):
    model, x = vpt.create_model(matrix.adapter(bb_key), prompt=zero, num_classes=3), images()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(pooled, library_features(matrix, bb_key, x)[1], rtol=0, atol=0)


@pytest.mark.parametrize("bb_key", [b for b in BACKBONES if MATRIX.capable(b, "key_values")])
def test_prefix_block_with_empty_prefix_is_library_block(matrix, bb_key):
    """The composed block used for key/value prefixes equals the library block when the prefix is empty."""
    bb = matrix.adapter(bb_key)
    h, ctx = bb.embed(images())
    empty = h.new_zeros(h.shape[0], 0, bb.kv_dim())
    with torch.no_grad():
        torch.testing.assert_close(bb.block(0, h, ctx, (empty, empty)), bb.block(0, h, ctx), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bb_key", ["eva02_rope", "eva_rope_mixed"])
def test_eva_rope_counts_prompts_as_prefix(matrix, bb_key):
    """Prompts get identity RoPE: same as telling every attention layer they are extra prefix tokens (the
    reference path, prompts in the sequence)."""
    model, x = matrix.model(bb_key, "vpt_deep", num_classes=3), images()
    model.fast = False
    ref = copy.deepcopy(model)
    P = model.prompt.num_tokens
    for blk in ref.backbone.model.blocks:
        blk.attn.num_prefix_tokens += P
    # reference: no padding, library attention skips P more tokens
    import vpt.backbones.timm_eva as eva_mod
    orig = eva_mod.pad_rope
    with torch.no_grad():
        out = model(x)
        eva_mod.pad_rope = lambda rope, n: rope
        try:
            out_ref = ref(x)
        finally:
            eva_mod.pad_rope = orig
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)


# 2.-4. frozen backbone in eval, pooling without prompts, only prompts/head train -------------------
@pytest.mark.parametrize("bb_key,prompt_key", MATRIX.cases(prompts=PROMPTED))
def test_contracts(matrix, bb_key, prompt_key):
    model = matrix.model(bb_key, prompt_key, num_classes=3)
    bb = model.backbone
    x = images(4, size=bb.data_config().input_size[-1])
    # 2. frozen and in eval() while the model trains
    model.train()
    assert not any(p.requires_grad for p in bb.parameters())
    assert not any(m.training for m in bb.modules())
    assert model.prompt.training and model.head.training

    # 3. pooling never sees prompts: features have the library's length, and pooling them with the
    # library's own pooling gives exactly what the head receives
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        if bb.layout is not None:
            assert feats.shape[1] == bb.layout.num_prefix + bb.layout.grid[0] * bb.layout.grid[1]
            lib_f = library_features(matrix, bb_key, x)[0]
            if lib_f is not None:
                assert feats.shape == lib_f.shape
                assert not torch.equal(feats, lib_f), "prompts changed nothing"
        pooled = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, bb.pool(feats), rtol=0, atol=0)

    # 4. only prompt/head tensors change after optimizer steps; each receives a gradient
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("prompt.", "head.")) for n in names)
    opt = torch.optim.SGD(trainable, lr=0.5)
    y = torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient"
        opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in names), f"{n}: changed={changed}"


@pytest.mark.parametrize("bb_key", ["vit", "open_clip"])
def test_blocks_before_first_prompted_layer_build_no_graph(matrix, bb_key):
    if bb_key not in matrix.backbones:
        pytest.skip("open_clip is not installed")
    model = matrix.model(bb_key, "vpt_deep_last1", num_classes=3)
    seen = []
    # hook each block's MLP: the fast path calls the block's parts, not the block module
    hooks = [blk.mlp.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
             for blk in (model.backbone.model.blocks if bb_key != "open_clip"
                         else model.backbone.model.visual.transformer.resblocks)]
    try:
        model.train()
        model(images())
    finally:
        for h in hooks:
            h.remove()
    assert seen == [False, False, True]


def test_linear_probe_builds_no_backbone_graph(matrix):
    model = matrix.model("vit", "none", num_classes=3)
    model.train()
    feats = model.forward_features(images())
    assert not feats.requires_grad
    assert model(images()).requires_grad  # the head still trains


def test_full_finetune_trains_backbone_in_train_mode(matrix):
    bb = matrix.fresh("vit")  # training the backbone unfreezes it: not the shared one
    model = vpt.create_model(bb, num_classes=3, train_backbone=True)
    model.train()
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert model.backbone.training


# 5.-6. artifacts -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bb_key,prompt_key", [("vit_reg", "vpt_deep"), ("deit_distilled", "vpt_prefix"),
                                               ("eva02_rope", "vpt_shallow"), ("open_clip", "vpt_deep_proj"),
                                               ("cnn", "pixel_pad"), ("vit_map", "pixel_patch")])
def test_artifact_round_trip(matrix, tmp_path, bb_key, prompt_key, monkeypatch):
    import json
    from safetensors.torch import load_file
    if bb_key not in matrix.backbones:
        pytest.skip("open_clip is not installed")
    model = matrix.model(bb_key, prompt_key, class_names=["a", "b", "c"])
    model.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["backbone"]["name"] == BACKBONES[bb_key][0] and cfg["backbone"]["weights_id"] == "random:0"
    assert cfg["prompt"]["kind"] == PROMPTS[prompt_key]["kind"] and cfg["class_names"] == ["a", "b", "c"]
    assert cfg["preprocessing"]["mean"] and cfg["preprocessing"]["input_size"]
    assert set(load_file(str(tmp_path / "adapter_model.safetensors"))) == set(model.trainable_state_dict())

    # 6. loading never unpickles anything
    def no_pickle(*a, **k):
        raise AssertionError("unpickling during from_pretrained")
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = vpt.from_pretrained(str(tmp_path))
    x = images(size=model.data_config.input_size[-1])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.class_names == ["a", "b", "c"]
