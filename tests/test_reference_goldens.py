"""vpt against the reference repositories' own code: tests/data/*.safetensors were written by
benchmarks/reference_goldens.py, running each method's official implementation (KMnP/vpt, CoOp, CoCoOp, KgCoOp,
PromptSRC) on the tiny seeded models below; vpt, given the same weights and the same learnable tensors, must
give the same logits, loss and gradients at 1e-5 in fp32. No reference checkout is needed here."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import vpt
from vpt.backbones import state_sha256

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = os.path.join(os.path.dirname(__file__), "data")
TOL = dict(rtol=1e-5, atol=1e-5)


def load_golden(name):
    with safe_open(os.path.join(DATA, name), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def golden_backbone(meta, key="backbone_sha256", module=lambda bb: bb.model):
    bb = vpt.create_backbone(meta["backbone"], pretrained=False, init_seed=int(meta["init_seed"]),
                             model_kwargs=json.loads(meta["model_kwargs"]))
    assert state_sha256(module(bb)) == meta[key], "the library's random init changed: regenerate the goldens"
    return bb


@pytest.mark.parametrize("kind", ["vpt_shallow", "vpt_deep"])
def test_vpt_equals_kmnp_prompted_vision_transformer(kind):
    """KMnP/vpt's PromptedVisionTransformer (its src/models/vit_prompt/vit.py) on the tiny ViT's weights, its own
    random prompts and head: vpt's prompts (block i's prompts replace the previous block's after the class token)
    give its logits, cross-entropy and gradients of every prompt and of the head."""
    g, meta = load_golden(f"kmnp_{kind}.safetensors")
    assert meta["repo"] == "KMnP/vpt" and meta["kind"] == kind
    bb = golden_backbone(meta)
    model = vpt.create_model(bb, prompt={"kind": kind, "num_tokens": int(meta["num_tokens"])},
                             num_classes=g["head_bias"].shape[0], head="linear").eval()
    prompts = model.prompt.prompts
    assert sorted(prompts, key=int) == [str(i) for i in range(len(prompts))]
    assert len(prompts) == sum(k.startswith("prompt_") for k in g)
    with torch.no_grad():
        for i, p in prompts.items():
            p.copy_(g[f"prompt_{i}"])
        model.head.fc.weight.copy_(g["head_weight"])
        model.head.fc.bias.copy_(g["head_bias"])
    logits = model(g["x"])
    torch.testing.assert_close(logits.detach(), g["logits"], **TOL)
    loss = F.cross_entropy(logits, g["labels"])
    torch.testing.assert_close(loss.detach().reshape(1), g["loss"], **TOL)
    loss.backward()
    for i, p in prompts.items():
        assert float(g[f"grad_prompt_{i}"].abs().max()) > 1e-4  # a gradient that can be told apart from zero
        torch.testing.assert_close(p.grad, g[f"grad_prompt_{i}"], **TOL)
    torch.testing.assert_close(model.head.fc.weight.grad, g["grad_head_weight"], **TOL)
    torch.testing.assert_close(model.head.fc.bias.grad, g["grad_head_bias"], **TOL)
