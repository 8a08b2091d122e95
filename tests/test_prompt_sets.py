"""PromptedModel.forward_features_sets: one batch under K prompt sets (K tasks, or K trainings of one task, on
the same images) equals each set's own forward pass, values and gradients, while the shared part runs once."""
import pytest
import torch

from vpt.backbones import create_backbone
from vpt.model import PromptedModel
from vpt.multitask import PromptMix

from helpers import TINY_VIT, TINY_VIT_NAME

pytestmark = pytest.mark.usefixtures("one_thread")
B = 3


def _models(backbone, prompts):
    out = []
    for j, p in enumerate(prompts):
        torch.manual_seed(j)
        m = PromptedModel(backbone, prompt=p, num_classes=4, head="linear")
        if m.prompt is not None:
            with torch.no_grad():
                for t in m.prompt.parameters():
                    t.add_(torch.randn_like(t))  # each set's prompt its own (not the shared init)
        out.append(m.eval())
    return out


def _sets(models, x, **kw):
    K, bb = len(models), models[0].backbone
    index = torch.arange(K).repeat_interleave(x.shape[0])  # (K*B,)
    mix = PromptMix([m.prompt for m in models], index, bb.layout.num_prefix if bb.layout else 0, block=x.shape[0])
    return models[0].forward_features_sets(x, mix, K, **kw)


@pytest.mark.parametrize("prompt", [
    {"kind": "vpt_deep", "num_tokens": 2},
    {"kind": "vpt_deep", "num_tokens": 2, "last_k": 1},  # block 0 runs once for every set
    {"kind": "vpt_shallow", "num_tokens": 3},
    {"kind": "vpt_prefix", "num_tokens": 2},
    {"kind": "pixel_pad", "width": 4},
])
@pytest.mark.parametrize("fast", [True, False])
def test_each_set_equals_its_own_forward(prompt, fast):
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=0, model_kwargs=dict(TINY_VIT))
    models = _models(bb, [prompt] * 3)
    for m in models:
        m.fast = fast
    x = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = _sets(models, x)
        for k, m in enumerate(models):
            torch.testing.assert_close(feats[k * B:(k + 1) * B], m.forward_features(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(feats[:B], feats[B:2 * B])  # the sets really differ


def test_gradients_reach_each_set_as_its_own_loss_would():
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=0, model_kwargs=dict(TINY_VIT))
    models = _models(bb, [{"kind": "vpt_deep", "num_tokens": 2}] * 2)
    x = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    feats = _sets(models, x)
    sum(m.forward_head(feats[k * B:(k + 1) * B]).square().sum() for k, m in enumerate(models)).backward()
    together = [[p.grad.clone() for p in m.prompt.parameters()] for m in models]
    for m in models:
        m.zero_grad(set_to_none=True)
    for k, m in enumerate(models):
        m(x).square().sum().backward()
        for g, p in zip(together[k], m.prompt.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_a_set_without_prompt_is_the_plain_backbone_and_a_cnn_takes_pixel_sets():
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=0, model_kwargs=dict(TINY_VIT))
    models = _models(bb, [{"kind": "vpt_deep", "num_tokens": 2}, None])
    x = torch.randn(B, 3, 32, 32)
    with torch.no_grad():
        feats = _sets(models, x)
        torch.testing.assert_close(feats[B:], models[1].forward_features(x), rtol=1e-5, atol=1e-5)  # no prompt
    cnn = create_backbone("timm:resnet10t", pretrained=False, init_seed=0,
                          model_kwargs=dict(pretrained_cfg_overlay=dict(input_size=(3, 32, 32))))
    models = _models(cnn, [{"kind": "pixel_pad", "width": 4}] * 2)
    with torch.no_grad():
        feats = _sets(models, x)
        for k, m in enumerate(models):
            torch.testing.assert_close(feats[k * B:(k + 1) * B], m.forward_features(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sets must be >= 1"):
        models[0].forward_features_sets(x, None, 0)
