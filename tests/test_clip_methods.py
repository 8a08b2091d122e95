"""The CoOp family on PromptedCLIP: CoCoOp, KgCoOp, MaPLe and PromptSRC, each checked against its published
formula on a tiny random open_clip model (2 vision + 2 text blocks), plus identities with open_clip itself,
artifacts and bad input."""
import os

import pytest
import torch
import torch.nn.functional as F

import vpt
from vpt.config import ConfigError

open_clip = pytest.importorskip("open_clip")
from vpt.backbones.open_clip_vit import OpenClipTextTower  # noqa: E402
from vpt.clip import PromptedCLIP, create_clip_model  # noqa: E402
from vpt.prompts.promptsrc import gpa_weights  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
NAMES = ["cat", "dog", "frog", "golden retriever"]
PHOTO = "a photo of a {c}."


@pytest.fixture(scope="module")
def bb():
    return vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=3, model_kwargs=TINY)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 3])


def make(bb, text, seed=0, **kw):
    torch.manual_seed(seed)
    return create_clip_model(bb, NAMES, text=text, **kw)


def clip_logits(bb, images, templates=(PHOTO,)):
    """open_clip's own zero-shot logits: scale * normalize(encode_image) @ mean-of-templates text embeddings."""
    m = bb.model
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        text = sum(m.encode_text(tok([t.format(c=n) for n in NAMES])) for t in templates) / len(templates)
        return m.logit_scale.exp() * m.encode_image(images, normalize=True) @ F.normalize(text, dim=-1).t()


def manual_text(bb, emb, tokens, deep):
    """Reference text encoder: open_clip's pieces, replacing tokens 1..n before the blocks in ``deep``."""
    m = bb.model
    x = emb + m.positional_embedding
    for i, blk in enumerate(m.transformer.resblocks):
        if i in deep:
            n = deep[i].shape[0]
            x = torch.cat([x[:, :1], deep[i].unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1 + n:]], dim=1)
        x = blk(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ m.text_projection


# --- identities with open_clip ----------------------------------------------------------------------------
def test_text_tower_loop_equals_encode_text_exactly(bb):
    tok = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat.", "golden retriever"])
    tower = OpenClipTextTower(bb.model)
    with torch.no_grad():
        assert torch.equal(tower.encode_embeddings(bb.model.token_embedding(tok), tok), bb.model.encode_text(tok))


@pytest.mark.parametrize("text", [
    {"kind": "kgcoop"},
    {"kind": "cocoop"},  # with the meta-net's last layer at zero
    {"kind": "promptsrc", "text_depth": 1, "vision_depth": 0},
    {"kind": "maple", "depth": 1, "num_tokens": 4},  # text side only: the image side gets coupled prompts
], ids=lambda t: t["kind"])
def test_prompts_with_no_effect_reproduce_open_clip_exactly(bb, images, text):
    model = make(bb, text).eval()
    if text["kind"] == "cocoop":
        torch.nn.init.zeros_(model.text_prompt.meta_net[2].weight)
        torch.nn.init.zeros_(model.text_prompt.meta_net[2].bias)
    tok = model.tokenizer([PHOTO.format(c=n) for n in NAMES])
    with torch.no_grad():
        if text["kind"] != "cocoop":
            assert torch.equal(model.text_features(), F.normalize(bb.model.encode_text(tok), dim=-1))
        if text["kind"] != "maple":
            torch.testing.assert_close(model(images[0]), clip_logits(bb, images[0]), rtol=1e-5, atol=1e-5)


# --- KgCoOp ----------------------------------------------------------------------------------------------
def test_kgcoop_term_is_zero_at_hand_crafted_context_and_matches_formula(bb, images):
    x, y = images
    model = make(bb, {"kind": "kgcoop", "weight": 8.0}).train()
    model(x)
    assert model.auxiliary_loss().abs().item() < 1e-6  # learned == hand-crafted: no distance
    assert model.auxiliary_loss() is None  # taken once
    with torch.no_grad():
        model.text_prompt.ctx.add_(torch.randn_like(model.text_prompt.ctx) * 0.5)
    model(x)
    aux = model.auxiliary_loss()
    with torch.no_grad():
        hand = F.normalize(bb.model.encode_text(model.tokenizer([PHOTO.format(c=n) for n in NAMES])), dim=-1)
        learned = model.text_features()
    expected = 8.0 * (1 - (learned * hand).sum(-1).mean())
    torch.testing.assert_close(aux.detach(), expected, rtol=1e-5, atol=1e-6)
    assert aux.item() > 1e-3
    aux.backward()
    assert model.text_prompt.ctx.grad.abs().sum() > 0


# --- CoCoOp ----------------------------------------------------------------------------------------------
def test_cocoop_text_features_change_with_the_image_as_published(bb, images):
    x, _ = images
    model = make(bb, {"kind": "cocoop"}).eval()
    tp = model.text_prompt
    with torch.no_grad():
        feats = F.normalize(model.encode_image(x), dim=-1)  # (B, E)
        prompts = tp.image_prompts(feats)  # (B, C, L, W)
        assert not torch.allclose(prompts[0], prompts[1])  # per-image context
        logits = model(x)
        for b in range(x.shape[0]):
            bias = tp.meta_net(feats[b])  # pi(x) = W2 relu(W1 x)
            ctx = (tp.ctx + bias).unsqueeze(0).expand(len(NAMES), -1, -1)  # v_m + pi(x)
            emb = torch.cat([tp.prefix, ctx, tp.suffix], dim=1)
            text = F.normalize(manual_text(bb, emb, tp.tokens, {}), dim=-1)
            torch.testing.assert_close(logits[b], model.logit_scale_value * text @ feats[b], rtol=1e-5, atol=1e-5)
        tp.config.eval_prompts_per_chunk = 1  # one image per chunk: same result
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)
        with pytest.raises(ConfigError, match="per-image"):
            model.text_features()
    model.train()
    tp.config.max_train_prompts = 8
    with pytest.raises(ConfigError, match=r"3 images x 4 classes = 12 text encodes.*lower train.batch_size"):
        model(x)
    tp.config.max_train_prompts = 8192
    F.cross_entropy(model(x), images[1]).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        "text_prompt.ctx", "text_prompt.meta_net.0.weight", "text_prompt.meta_net.0.bias",
        "text_prompt.meta_net.2.weight", "text_prompt.meta_net.2.bias"}


# --- MaPLe -----------------------------------------------------------------------------------------------
def test_maple_vision_prompts_are_the_coupling_of_the_text_prompts(bb, images):
    x, _ = images
    model = make(bb, {"kind": "maple", "depth": 2, "vision_ln_pre": False}).eval()  # vpt's placement (the
    # reference placement, through ln_pre, is tests/test_clip_reference.py's)
    tp = model.text_prompt
    assert tp.num_tokens == 2 and model.prompt is not None and model.prompt.depth == 2
    with torch.no_grad():
        for j, text_j in enumerate([tp.ctx, tp.text_deep[0]]):
            expected = text_j @ tp.couplings[j].weight.t() + tp.couplings[j].bias  # F_j(P_j)
            torch.testing.assert_close(model.prompt.tokens(j, 3)[1], expected)
        # the text side: context at block 0, deep text prompts replace tokens 1..2 at block 1
        ref = F.normalize(manual_text(bb, tp(), tp.tokens, {1: tp.text_deep[0]}), dim=-1)
        torch.testing.assert_close(model.text_features(), ref, rtol=1e-5, atol=1e-6)
        # the image side equals VPT-deep carrying exactly the coupled tokens
        deep = create_clip_model(bb, NAMES, prompt={"kind": "vpt_deep", "num_tokens": 2},
                                 head={"kind": "zeroshot", "templates": [PHOTO]})
        for j in range(2):  # VPT-deep keeps one (P, D) tensor per block
            deep.prompt.prompts[str(j)].copy_(model.prompt.tokens(j, 1)[0])
        torch.testing.assert_close(model.encode_image(x), deep.encode_image(x), rtol=1e-5, atol=1e-6)
    # "a photo" is learned, "of a" stays words
    assert model.tokenizer(["a photo of a cat."])[0].tolist() == tp.tokens[0].tolist()
    model.train()
    F.cross_entropy(model(x), images[1]).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads == {"text_prompt.ctx", "text_prompt.text_deep.0", "text_prompt.couplings.0.weight",
                     "text_prompt.couplings.0.bias", "text_prompt.couplings.1.weight", "text_prompt.couplings.1.bias"}


# --- PromptSRC -------------------------------------------------------------------------------------------
def test_promptsrc_losses_zero_at_the_frozen_model_and_match_formula(bb, images):
    x, y = images
    zero = make(bb, {"kind": "promptsrc", "text_depth": 1, "vision_depth": 0, "templates": [PHOTO]}).train()
    zero(x)
    assert zero.auxiliary_loss().abs().item() < 1e-5
    templates = ["a photo of a {c}.", "a drawing of the {c}."]
    model = make(bb, {"kind": "promptsrc", "text_depth": 2, "vision_depth": 2, "vision_tokens": 3,
                      "templates": templates}).train()
    assert model.prompt.depth == 2 and model.prompt.tokens(1, 1).shape == (1, 3, 64)
    with torch.no_grad():
        for p in model.text_prompt.vision_prompts.values():
            p.mul_(50)
    logits = model(x)
    aux = model.auxiliary_loss()
    with torch.no_grad():
        m, tok = bb.model, model.tokenizer
        raw = sum(m.encode_text(tok([t.format(c=n) for n in NAMES])) for t in templates) / 2
        frozen_text = F.normalize(raw, dim=-1)  # mean of the raw embeddings, then normalised
        frozen_img = m.encode_image(x, normalize=True)
        img = F.normalize(model.encode_image(x), dim=-1)
        text = model.text_features()
        zs = model.logit_scale_value * frozen_img @ frozen_text.t()
        kl = (F.softmax(zs, 1) * (F.log_softmax(zs, 1) - F.log_softmax(logits, 1))).sum() / logits.numel()
        expected = 25 * (text - frozen_text).abs().mean() + 10 * (img - frozen_img).abs().mean() + kl
    torch.testing.assert_close(aux.detach(), expected, rtol=1e-5, atol=1e-6)
    assert aux.item() > 1e-3
    (F.cross_entropy(logits, y) + aux).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        "text_prompt.ctx", "text_prompt.text_deep.0", "text_prompt.vision_prompts.0", "text_prompt.vision_prompts.1"}


def test_promptsrc_gaussian_aggregation(bb):
    w = gpa_weights(20, 15, 1)
    assert abs(sum(w) - 1) < 1e-12 and max(range(20), key=w.__getitem__) == 14  # peak at epoch 15 (1-based)
    assert abs(sum(gpa_weights(3, 2, 1)) - 1) < 1e-12
    with pytest.raises(ConfigError, match="no weight"):
        gpa_weights(2, 5000, 1)
    model = make(bb, {"kind": "promptsrc", "text_depth": 2, "vision_depth": 1, "gpa_mean": 2, "gpa_std": 1})
    params = {n: p for n, p in model.text_prompt.named_parameters()}
    w = gpa_weights(3, 2, 1)
    snapshots = []
    for epoch in range(3):
        with torch.no_grad():
            for p in params.values():
                p.normal_()
        snapshots.append({n: p.detach().clone() for n, p in params.items()})
        if epoch == 1:  # a resumed run continues from the saved aggregate
            state = model.run_state()
            assert set(state) == {f"gpa.{n}" for n in params}
            model.text_prompt._gpa = None
            model.load_run_state(state)
        model.end_epoch(epoch, 3)
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), sum(w[e] * snapshots[e][n] for e in range(3)))


# --- artifacts, transfer, registry ---------------------------------------------------------------------
@pytest.mark.parametrize("text", [{"kind": "cocoop"}, {"kind": "kgcoop"}, {"kind": "maple", "depth": 2},
                                  {"kind": "promptsrc", "text_depth": 2, "vision_depth": 2}],
                         ids=lambda t: t["kind"])
def test_artifact_round_trip_and_transfer_to_other_classes(bb, images, tmp_path, text):
    from safetensors.torch import load_file
    x, y = images
    model = make(bb, text, seed=1).train()
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.5)
    loss = F.cross_entropy(model(x), y)
    aux = model.auxiliary_loss()
    (loss + (aux if aux is not None else 0)).backward()
    opt.step()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.backbone.named_parameters())
    model.save_pretrained(str(tmp_path / "a"))
    saved = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    loaded = vpt.from_pretrained(str(tmp_path / "a"), backbone=bb)
    assert isinstance(loaded, PromptedCLIP) and loaded.text_config.kind == text["kind"]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        other = model.for_classes(["red car", "tree", "cat"])
        assert other.num_classes == 3 and other(x).shape == (3, 3)
        same = model.for_classes(NAMES)
        assert torch.equal(same(x), model(x))


def test_vpt_list_shows_the_methods(capsys):
    from vpt.cli import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("coop", "cocoop", "kgcoop", "maple", "promptsrc"):
        assert f"\n  {kind} " in out


# --- bad input --------------------------------------------------------------------------------------------
def test_bad_input_messages(bb):
    with pytest.raises(ConfigError, match=r"text.depth=3 is beyond the text encoder's depth: it has 2 blocks"):
        make(bb, {"kind": "maple", "depth": 3})
    with pytest.raises(ConfigError, match=r"text.vision_depth=5 is beyond the image encoder's depth"):
        make(bb, {"kind": "promptsrc", "text_depth": 2, "vision_depth": 5})
    with pytest.raises(ConfigError, match="'maple' is a CLIP text prompt: put it in a CLIP model's text config"):
        vpt.create_model(bb, prompt="maple", num_classes=2)
    with pytest.raises(ConfigError, match="needs an open_clip backbone"):
        create_clip_model("timm:vit_tiny_patch16_224", NAMES, text={"kind": "promptsrc"}, pretrained=False,
                          model_kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2))
    with pytest.raises(ConfigError, match="drives the image-encoder prompts itself"):
        make(bb, {"kind": "maple", "depth": 1}, prompt={"kind": "vpt_deep", "num_tokens": 2})
    with pytest.raises(ConfigError, match="unknown text prompt kind 'mapel'.*did you mean 'maple'"):
        make(bb, {"kind": "mapel"})
    with pytest.raises(ConfigError, match="class-specific context"):
        make(bb, {"num_tokens": 2, "class_specific": True}).for_classes(["a", "b"])
    with pytest.raises(ConfigError, match="CoCoOp shares one context"):
        make(bb, {"kind": "cocoop", "class_specific": True})


def test_text_tower_refusal_names_the_tower():
    from vpt.backbones.open_clip_vit import text_tower

    class HFText(torch.nn.Module):
        pass

    class FakeCLIP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text = HFText()

    with pytest.raises(ConfigError, match="text tower is HFText"):
        text_tower(FakeCLIP())


def test_shipped_method_recipes_hold_paper_settings():
    import yaml

    from vpt.tasks.classification import RunConfig
    from vpt.config import from_dict
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    expected = {  # method: (epochs, batch, lr, text settings) from the official configs
        "cocoop": (10, 1, 0.002, {"kind": "cocoop", "num_tokens": 4, "init": "a photo of a"}),
        "kgcoop": (100, 128, 0.002, {"kind": "kgcoop", "init": "a photo of a", "weight": 8.0}),
        "maple": (5, 4, 0.0035, {"kind": "maple", "num_tokens": 2, "depth": 9}),
        "promptsrc": (20, 4, 0.0025, {"kind": "promptsrc", "num_tokens": 4, "text_depth": 9, "vision_tokens": 4,
                                      "vision_depth": 9, "text_weight": 25.0, "image_weight": 10.0,
                                      "gpa_mean": 15, "gpa_std": 1}),
    }
    for kind, (epochs, batch, lr, text) in expected.items():
        cfg = from_dict(RunConfig, yaml.safe_load(open(os.path.join(repo, "vpt", "recipes", f"clip_{kind}_vit_b16.yaml"))))
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr, cfg.data.shots) == (epochs, batch, lr, 16)
        assert cfg.model.backbone.name == "open_clip:ViT-B-16/openai" and cfg.model.type == "clip"
        assert {k: getattr(cfg.model.text, k) for k in text} == text  # typed when the recipe is loaded
        assert cfg.sched.warmup_type == "constant" and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4
        assert os.path.isfile(os.path.join(repo, "vpt", "recipes", f"clip_{kind}_tiny.yaml"))
    vpt_cfg = from_dict(RunConfig, yaml.safe_load(open(os.path.join(repo, "vpt", "recipes", "clip_vpt_deep_vit_b16.yaml"))))
    assert (vpt_cfg.train.epochs, vpt_cfg.train.batch_size, vpt_cfg.optim.lr) == (5, 4, 0.0025)
    from vpt.prompts import DeepPromptConfig
    assert vpt_cfg.model.prompt == DeepPromptConfig(num_tokens=8, init="normal")


def test_sizes_from_a_config_are_bounded_before_allocation(bb):
    with pytest.raises(ConfigError, match=r"text.num_tokens must be in \[1, 1024\], got 1000000000"):
        make(bb, {"kind": "maple", "depth": 1, "num_tokens": 10 ** 9, "init": None})  # the config's own bound
    with pytest.raises(ConfigError, match="does not fit the text context length 77; use at most 74"):
        make(bb, {"kind": "maple", "depth": 1, "num_tokens": 100, "init": None})  # then the tokenizer's
    with pytest.raises(ConfigError, match=r"text.vision_tokens must be in \[0, 1024\]"):
        make(bb, {"kind": "promptsrc", "text_depth": 1, "vision_depth": 1, "vision_tokens": 10 ** 9})
