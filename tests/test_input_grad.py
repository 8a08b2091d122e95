"""Gradients reach whatever asks for them (issue 18, point 1): the input (saliency maps, adversarial
examples, input-gradient penalties) and backbone parameters before the first prompted block. Checked with
``torch.autograd.gradcheck`` on tiny float64 models over the backbone family x prompt kind matrix."""
import copy

import pytest
import torch

import vpt
from helpers import FAMILIES, MATRIX

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["none", "vpt_shallow", "vpt_deep_last1", "vpt_prefix_last1", "pixel_pad"]

_CACHE = {}


def model64(bb, prompt):
    """The matrix's model in float64 (on a copy of the shared adapter), cached per pair."""
    if (bb, prompt) not in _CACHE:
        torch.manual_seed(0)
        m = vpt.create_model(copy.deepcopy(MATRIX.adapter(bb)), prompt=MATRIX.prompts[prompt], num_classes=2)
        _CACHE[bb, prompt] = m.double().eval()
    return _CACHE[bb, prompt]


def inputs(seed=0, size=32):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("bb,prompt", MATRIX.cases(FAMILIES, PROMPTS))
def test_gradcheck_input(bb, prompt):
    model = model64(bb, prompt)
    x = inputs().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g is not None and g.abs().sum() > 0  # was None before: blocks before the prompt ran without autograd
    assert torch.autograd.gradcheck(model, (x,), fast_mode=True, eps=1e-6, atol=1e-5)


@pytest.mark.slow
def test_gradcheck_input_full_jacobian():
    """One case with the full (slow-mode) numerical Jacobian: deep prompts in the last block only, on 16 px
    inputs (the ViT built for any input size) to keep the Jacobian small."""
    model = model64("vit_dynamic", "vpt_deep_last1")
    x = inputs(1, size=16).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: model(t)[:, 0], (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("bb", ["vit", "open_clip"])
def test_unfrozen_block_before_prompt_gets_gradients(matrix, bb):
    """A backbone block the user unfroze in front of the first prompted block is trained too."""
    if bb not in matrix.backbones:
        pytest.skip("open_clip is not installed")
    model = vpt.create_model(matrix.fresh(bb), prompt=matrix.prompts["vpt_deep_last1"], num_classes=2)
    block0 = model.backbone.block_modules()[0]
    block0.requires_grad_(True)
    assert model.backbone.first_trainable_block() == 0
    model.train()
    model(inputs().float()).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block0.parameters() if p.ndim > 1)
    assert model.prompt.prompts["2"].grad is not None


def test_frozen_blocks_still_skip_autograd():
    """The optimisation stays where nothing asks for a gradient: no graph through frozen block 0."""
    model = model64("vit", "vpt_deep_last1").float()
    seen = []
    hook = model.backbone.model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    try:
        model(inputs().float())
        model(inputs().float().requires_grad_(True))
    finally:
        hook.remove()
        model.double()
    assert seen == [False, True]


def test_saliency_map_matches_reference_path():
    """The input gradient is the same on the fast path and the reference path (prompts in the sequence)."""
    model = model64("vit", "vpt_shallow")
    x = inputs(2).requires_grad_(True)
    (fast,) = torch.autograd.grad(model(x)[:, 1].sum(), x)
    model.fast = False
    try:
        (ref,) = torch.autograd.grad(model(x)[:, 1].sum(), x)
    finally:
        model.fast = True
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-12)
