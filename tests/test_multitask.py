"""Many tasks from one frozen backbone in one batch: each sample's output equals its task run alone."""
import pytest
import torch

import vpt
from vpt.artifact import ArtifactError
from vpt.backbones import create_backbone
from vpt.multitask import MultiTaskModel

K = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
CLIP_KW = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
               text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
BACKBONES = {
    "vit": ("timm:vit_tiny_patch16_224", dict(K, reg_tokens=1)),
    "eva": ("timm:eva02_tiny_patch14_224", dict(K, ref_feat_shape=(4, 4))),
    "open_clip": ("open_clip:ViT-B-32", CLIP_KW),
}
TASKS = {
    "deep3": ({"kind": "vpt_deep", "num_tokens": 3}, 3),
    "deep5": ({"kind": "vpt_deep", "num_tokens": 5}, 4),
    "shallow": ({"kind": "vpt_shallow", "num_tokens": 2}, 2),
    "prefix": ({"kind": "vpt_prefix", "num_tokens": 2}, 2),
    "pad": ({"kind": "pixel_pad", "width": 4}, 5),
    "linear": (None, 6),
}


def build_tasks(bb):
    torch.manual_seed(0)
    out = {}
    for name, (prompt, n) in TASKS.items():
        if prompt and prompt["kind"] == "vpt_prefix" and bb.prefix_refusal:
            continue
        out[name] = vpt.create_model(bb, prompt=prompt, num_classes=n)
        with torch.no_grad():  # make heads differ from init so a mix-up would show
            for p in out[name].parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
    return out


@pytest.mark.parametrize("bb_key", list(BACKBONES))
def test_mixed_batch_equals_each_task_alone(bb_key):
    name, kw = BACKBONES[bb_key]
    bb = create_backbone(name, pretrained=False, model_kwargs=kw)
    tasks = build_tasks(bb)
    mt = MultiTaskModel(tasks)
    names = list(tasks) + ["base", None] + list(tasks)[:3]
    x = torch.randn(len(names), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = vpt.create_model(bb)
    with torch.no_grad():
        outs = mt(x, names)
        for i, n in enumerate(names):
            alone = plain(x[i:i + 1])[0] if n in (None, "base") else tasks[n](x[i:i + 1])[0]
            torch.testing.assert_close(outs[i], alone, rtol=1e-5, atol=1e-5, msg=f"sample {i} ({n})")
    # token tasks with the same schedule (and pixel / unprompted ones) share one backbone pass
    groups = mt._groups([n if n else "base" for n in names])
    assert any({"deep3", "deep5", "pad", "linear", "base"} <= set(g) for g in groups), groups


def test_from_pretrained_shares_one_backbone_and_refuses_others(tmp_path):
    bb = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, model_kwargs=K)
    tasks = build_tasks(bb)
    dirs = {}
    for n in ("deep3", "pad"):
        dirs[n] = str(tmp_path / n)
        tasks[n].save_pretrained(dirs[n])
    mt = MultiTaskModel.from_pretrained(dirs)
    assert mt.tasks["deep3"].backbone is mt.tasks["pad"].backbone
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = mt(x, ["pad", "deep3"])
        torch.testing.assert_close(out[0], tasks["pad"](x[:1])[0], rtol=1e-5, atol=1e-5)
    other = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, init_seed=3, model_kwargs=K)
    d = str(tmp_path / "other")
    vpt.create_model(other, prompt="vpt_deep", num_classes=2).save_pretrained(d)
    with pytest.raises(ArtifactError, match="weights_id"):
        MultiTaskModel.from_pretrained({**dirs, "other": d})
    with pytest.raises(KeyError, match="unknown task"):
        mt(x, ["pad", "nope"])


def test_pixel_tasks_on_a_cnn():
    bb = create_backbone("timm:resnet10t", pretrained=False, model_kwargs=dict(zero_init_last=False))
    torch.manual_seed(0)
    a = vpt.create_model(bb, prompt={"kind": "pixel_pad", "width": 8, "image_size": [64, 64]}, num_classes=2)
    b = vpt.create_model(bb, prompt={"kind": "pixel_patch", "size": 16, "image_size": [64, 64]}, num_classes=3)
    mt = MultiTaskModel({"a": a, "b": b})
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = mt(x, ["a", "b", "a"])
        torch.testing.assert_close(out[1], b(x[1:2])[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[2], a(x[2:3])[0], rtol=1e-5, atol=1e-5)


def test_key_mask_decided_on_host():
    """Tasks with equal prompt lengths need no key mask, and PromptMix says so without a device sync."""
    from vpt.multitask import PromptMix
    bb = create_backbone(*BACKBONES["vit"][:1], pretrained=False, model_kwargs=BACKBONES["vit"][1])
    a, b, c = (vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": n}, num_classes=2).prompt
               for n in (3, 3, 5))
    index = torch.tensor([0, 1, 1, 0])
    same = PromptMix([a, b], index, bb.layout.num_prefix)
    assert same.tok_full and same.key_mask(0, same.P, 10) is None
    mixed = PromptMix([a, c], index, bb.layout.num_prefix)
    mask = mixed.key_mask(0, mixed.P, 12)
    assert not mixed.tok_full and mask.shape == (4, 12)
    k = bb.layout.num_prefix
    assert mask[0, k:k + 5].tolist() == [True, True, True, False, False]  # task 0 has 3 of the 5 slots
    assert mask[1, k:k + 5].all()
    assert mixed.key_mask(0, 0, 7) is None  # no prompt tokens in the sequence: nothing to mask


def test_mask_bias_follows_autocast():
    """Under autocast q/k are bf16 while the residual stream is fp32: the key-mask bias takes q's dtype."""
    from vpt.backbones.base import mask_bias
    h, key_mask = torch.zeros(2, 4, 8), torch.tensor([[True, False, True], [True, True, True]])
    assert mask_bias(key_mask, h).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bias = mask_bias(key_mask, h)
    assert bias.dtype == torch.bfloat16 and bias.shape == (2, 1, 1, 3)
    assert bias[0, 0, 0].tolist() == [0.0, float("-inf"), 0.0]
    # and a mixed batch that needs the mask runs under bf16 autocast, close to fp32
    name, kw = BACKBONES["vit"]
    bb = create_backbone(name, pretrained=False, model_kwargs=kw)
    tasks = {n: m for n, m in build_tasks(bb).items() if n in ("deep3", "deep5")}
    mt = MultiTaskModel(tasks)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    names = ["deep3", "deep5", "deep5", "deep3"]
    with torch.no_grad():
        ref = mt(x, names)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = mt(x, names)
    for a, b in zip(low, ref):
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05)
