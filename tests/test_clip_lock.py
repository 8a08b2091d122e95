"""PromptedCLIP answers open_clip's training switches as open_clip.CLIP does (open_clip_train/main.py calls
``lock_image_tower(unlocked_groups=, freeze_bn_stats=)``, ``lock_text_tower(unlocked_layers=,
freeze_layer_norm=)`` and ``set_grad_checkpointing()``): the same tensors end up trainable as on the
library model given the same call, the prompts stay trainable unless asked otherwise, and checkpointing
recomputes without changing a gradient."""
import copy
import math

import pytest
import torch

import vpt

open_clip = pytest.importorskip("open_clip")
from vpt.clip import create_clip_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=3, width=32, patch_size=8, head_width=16),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
FAMILIES = {"clip": TINY, "custom_text": dict(TINY, force_custom_text=True)}
CLASSES = ["a diagram", "a dog", "a cat"]
DEEP = {"kind": "vpt_deep", "num_tokens": 2}


def pair(family, **kw):
    """(PromptedCLIP, the same open_clip model as a plain library model with open_clip's defaults: all trainable)."""
    adapter = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=3, model_kwargs=FAMILIES[family])
    ref = copy.deepcopy(adapter.model).requires_grad_(True)
    kw.setdefault("prompt", DEEP)
    kw.setdefault("head", "linear")
    return create_clip_model(adapter, CLASSES, **kw), ref


def trainable(module, where):
    return {n for n, p in module.named_parameters() if p.requires_grad and where(n)}


def visual(n):
    return n.startswith("visual.")


def text(n):
    return not n.startswith("visual.") and not n.startswith("logit_")


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("groups", [0, 1, 2, 99])
def test_lock_image_tower_unlocks_what_open_clip_unlocks(family, groups, tmp_path):
    model, ref = pair(family)
    model.lock_image_tower(unlocked_groups=groups, freeze_bn_stats=False)
    ref.lock_image_tower(unlocked_groups=groups, freeze_bn_stats=False)
    lib = model.backbone.model
    assert trainable(lib, visual) == trainable(ref, visual)
    assert (groups == 0) == (not trainable(lib, visual))
    assert not trainable(lib, text)  # the text tower was frozen and nobody unlocked it
    assert all(p.requires_grad for p in model.prompt.parameters())  # prompts are not the tower: still trained
    # what an artifact can describe saves; a partial unlock is refused with the fix
    if groups in (0, 99):
        assert model.train_backbone == (groups == 99)
        model.save_pretrained(str(tmp_path / "a"))
        loaded = vpt.from_pretrained(str(tmp_path / "a"))
        assert loaded.train_backbone == (groups == 99)
    else:
        with pytest.raises(vpt.ArtifactError, match="after a partial lock_image_tower / lock_text_tower"):
            model.save_pretrained(str(tmp_path / "a"))


def test_lock_image_tower_can_freeze_the_prompts_too():
    model, _ = pair("clip")
    head = {n for n, _ in model.head.named_parameters(prefix="head")}
    model.lock_image_tower(train_prompts=False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head  # the linear head still trains
    model.lock_image_tower()  # asked again: prompts trainable again
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head | {
        n for n, _ in model.prompt.named_parameters(prefix="prompt")}


def test_open_clip_step_after_partial_unlock_trains_prompts_and_the_last_group():
    """open_clip_train's order: lock, then its contrastive step; the unlocked block gets gradients through
    vpt's prompted loop (it starts autograd at the first trainable block)."""
    from open_clip.loss import ClipLoss
    torch.manual_seed(0)
    model, _ = pair("clip")
    model.output_dict = True
    model.lock_image_tower(unlocked_groups=2)
    images = torch.randn(4, 3, 32, 32)
    texts = open_clip.get_tokenizer("ViT-B-32")(["a diagram", "a dog", "a cat", "a red car"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    out = model(images, texts)
    sum(ClipLoss()(**out, output_dict=True).values()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    last = {n for n in changed if n.startswith("backbone.model.visual.")}
    prompts = {f"prompt.{n}" for n, _ in model.prompt.named_parameters()}
    assert {n for n in changed if n.startswith("prompt.")} == prompts
    assert any(".resblocks.2." in n for n in last) and any(n.endswith("visual.proj") for n in last)
    assert not any(".resblocks.0." in n for n in last)  # still locked
    assert changed == {n for n in changed if n.startswith(("prompt.", "backbone.model.visual."))}
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("layers", [0, 1])
def test_lock_text_tower_locks_what_open_clip_locks(family, layers):
    model, ref = pair(family, prompt=None, head="zeroshot", text={"kind": "coop"})
    lib = model.backbone.model
    lib.requires_grad_(True)  # as open_clip leaves it, so the lock has something to lock
    model.lock_text_tower(unlocked_layers=layers, freeze_layer_norm=True)
    ref.lock_text_tower(unlocked_layers=layers, freeze_layer_norm=True)
    assert trainable(lib, text) == trainable(ref, text)
    assert (layers == 0) == (not trainable(lib, text))
    assert all(p.requires_grad for p in model.text_prompt.parameters())  # the learned context stays trained
    model.lock_text_tower(train_prompts=False)
    assert not any(p.requires_grad for p in model.text_prompt.parameters())


def test_lock_text_tower_refuses_what_open_clip_refuses():
    model, ref = pair("clip")
    with pytest.raises(AssertionError, match="Unfreezing LayerNorm is not supported") as theirs:
        ref.lock_text_tower(freeze_layer_norm=False)
    with pytest.raises(AssertionError, match="Unfreezing LayerNorm is not supported") as ours:
        model.lock_text_tower(freeze_layer_norm=False)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_set_grad_checkpointing_as_open_clip_and_gradients_unchanged(family):
    torch.manual_seed(0)
    model, ref = pair(family, prompt=DEEP, head="zeroshot", text={"kind": "coop"})
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([0, 2])

    def grads():
        model.zero_grad()
        model.train()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.set_grad_checkpointing()
    ref.set_grad_checkpointing()
    lib = model.backbone.model
    tower = lib.text.transformer if family == "custom_text" else lib.transformer
    ref_tower = ref.text.transformer if family == "custom_text" else ref.transformer
    assert tower.grad_checkpointing is True and ref_tower.grad_checkpointing is True
    assert model.grad_checkpointing and model.visual.lean == 1.0
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and any(n.startswith("text_prompt.") for n in plain)
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-5, atol=1e-6)
    model.set_grad_checkpointing(False)
    assert not tower.grad_checkpointing and not model.grad_checkpointing
