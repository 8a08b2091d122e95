"""MaPLe and PromptSRC compute what their papers' code computes by default: the block-0 image prompts go
through the image tower's ln_pre (MaPLe's / PromptSRC's clip/model.py append them before ``self.ln_pre(x)``),
the deeper ones replace the last tokens raw; MaPLe's F_1..F_{J-1} start as copies of one Linear
(``_get_clones``); PromptSRC's frozen text features use its 60 templates. Each opt-out restores vpt's
earlier behaviour."""
import pytest
import torch
import torch.nn.functional as F

import vpt

open_clip = pytest.importorskip("open_clip")
from vpt.clip import create_clip_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=3, width=64, patch_size=8, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=3))
NAMES = ["cat", "dog", "frog"]
PHOTO = "a photo of a {c}."


@pytest.fixture(scope="module")
def bb():
    b = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=5, model_kwargs=TINY)
    with torch.no_grad():  # a trained-looking ln_pre, so passing through it is visible
        ln = b.model.visual.ln_pre
        ln.weight.copy_(1 + 0.5 * torch.randn_like(ln.weight))
        ln.bias.copy_(0.3 * torch.randn_like(ln.bias))
    return b


def reference_image_features(visual, prompts):
    """MaPLe's VisionTransformer_MaPLe.forward / PromptSRC's VisionTransformer_VPTD (their clip/model.py),
    on open_clip's modules: prompts appended after the patches, then ln_pre; block i >= 1 replaces the last
    n tokens with prompts[i] (ResidualAttentionBlock_MaPLe / _IVLP); ln_post on the class token; proj."""
    def forward(x):
        x = visual.conv1(x).flatten(2).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        n = prompts[0].shape[0]
        x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)
        x = visual.ln_pre(x)
        for i, blk in enumerate(visual.transformer.resblocks):
            if 0 < i < len(prompts):
                x = torch.cat([x[:, :-n], prompts[i].expand(x.shape[0], -1, -1)], dim=1)
            x = blk(x)
        return visual.ln_post(x[:, 0]) @ visual.proj
    return forward


@pytest.mark.parametrize("kind", ["maple", "promptsrc"])
def test_first_image_prompts_pass_through_ln_pre_by_default(bb, kind):
    text = ({"kind": "maple", "depth": 2} if kind == "maple" else
            {"kind": "promptsrc", "text_depth": 2, "vision_depth": 2, "vision_tokens": 2, "templates": [PHOTO]})
    torch.manual_seed(0)
    model = create_clip_model(bb, NAMES, text=text).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    tp = model.text_prompt
    with torch.no_grad():
        raw = [tp.vision_tokens(j) if kind == "maple" else tp.vision_prompts[str(j)] for j in range(2)]
        expected = reference_image_features(bb.model.visual, raw)(x)
        torch.testing.assert_close(model.encode_image(x), expected, rtol=1e-5, atol=1e-5)
        # the opt-out: the prompts enter after ln_pre (vpt's placement), a visibly different result
        torch.manual_seed(0)
        after = create_clip_model(bb, NAMES, text=dict(text, vision_ln_pre=False)).eval()
        after.load_state_dict(model.state_dict())
        assert (after.encode_image(x) - expected).abs().max() > 1e-3


def test_maple_deeper_couplings_start_as_copies_of_one_linear(bb):
    torch.manual_seed(0)
    tp = create_clip_model(bb, NAMES, text={"kind": "maple", "depth": 3}).text_prompt
    c = tp.couplings
    assert torch.equal(c[1].weight, c[2].weight) and torch.equal(c[1].bias, c[2].bias)
    assert not torch.equal(c[0].weight, c[1].weight)
    assert c[1].weight.data_ptr() != c[2].weight.data_ptr()  # copies, trained apart
    torch.manual_seed(0)
    ind = create_clip_model(bb, NAMES, text={"kind": "maple", "depth": 3, "coupling_init": "independent"}).text_prompt
    assert not torch.equal(ind.couplings[1].weight, ind.couplings[2].weight)


def test_promptsrc_uses_its_60_templates_by_default():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    from vpt.prompts.promptsrc import PromptSRCConfig
    from vpt.zeroshot import load_templates
    assert PromptSRCConfig().templates == "promptsrc60"
    t = load_templates("promptsrc60")
    openai = [f("{c}") for f in OPENAI_IMAGENET_TEMPLATES]
    assert len(t) == 60 and t[0] == PHOTO and set(t) == set(openai[:60]) and t[1:4] == openai[:3]
    assert len(load_templates("openai")) == 80


GOLDEN = __import__("os").path.join(__import__("os").path.dirname(__file__), "data", "maple_vision.safetensors")


def test_maple_image_encoder_equals_the_reference_repositorys_own_code():
    """tests/data/maple_vision.safetensors was written by benchmarks/reference_goldens.py --maple, running
    multimodal-prompt-learning's own VisionTransformer_MaPLe on this tiny tower: vpt's MaPLe, carrying the same
    image prompts (F_j(P_j) set to them exactly), gives its features at 1e-5 and its prompt gradients up to the
    reference's fp16 cast."""
    import json

    from safetensors import safe_open
    from vpt.backbones import state_sha256
    with safe_open(GOLDEN, "pt") as f:
        meta = f.metadata()
        g = {k: f.get_tensor(k) for k in f.keys()}
    bb = vpt.create_backbone(meta["backbone"], pretrained=False, init_seed=int(meta["init_seed"]),
                             model_kwargs=json.loads(meta["model_kwargs"]))
    assert state_sha256(bb.model.visual) == meta["visual_sha256"], "open_clip's random init changed: regenerate"
    depth, n = int(meta["depth"]), int(meta["num_tokens"])
    torch.manual_seed(0)
    model = create_clip_model(bb, NAMES, text={"kind": "maple", "depth": depth, "num_tokens": n}).eval()
    tp = model.text_prompt
    with torch.no_grad():
        eye = torch.eye(n, tp.ctx.shape[1])
        tp.ctx.copy_(eye)
        for p in tp.text_deep:
            p.copy_(eye)
        for j, c in enumerate(tp.couplings):  # F_j(e_k) = W_j[:, k] = prompt_j[k], exactly
            c.weight.zero_()
            c.bias.zero_()
            c.weight[:, :n] = g[f"prompt_{j}"].t()
    feats = model.encode_image(g["x"])
    torch.testing.assert_close(feats.detach(), g["features"], rtol=1e-5, atol=1e-5)
    (feats * g["loss_weights"]).sum().backward()
    for j, c in enumerate(tp.couplings):
        grad = c.weight.grad[:, :n].t()  # d loss / d prompt_j
        ref = g[f"grad_{j}"]  # fp16-rounded: half an fp16 step of the largest entry is the tolerance
        torch.testing.assert_close(grad, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
        assert float(ref.abs().max()) > 1e-3
