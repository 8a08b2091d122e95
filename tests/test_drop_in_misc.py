"""Drop-in details: timm's forward_intermediates attn_mask, zero prompts exact on the fast path (DeiT
distilled included), and torch.jit.script refused with a pointer to torch.export."""
import pytest
import torch

import vpt
import vpt.backbones  # used as vpt.backbones.X: vpt imports submodules lazily
from helpers import FAMILIES, KINDS, MATRIX

pytestmark = pytest.mark.usefixtures("one_thread")
TOKEN_FAMILIES = [b for b in FAMILIES if MATRIX.capable(b, "tokens")]
adapter = MATRIX.adapter  # the session's shared adapters (tests here change none of them)


def images(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("key", TOKEN_FAMILIES)
@pytest.mark.parametrize("zero", [None, {"kind": "vpt_deep", "num_tokens": 0},
                                  {"kind": "pixel_pad", "width": 4, "init_std": 0.0}])
def test_zero_prompts_exact_on_the_fast_path(key, zero):
    """model(x) (the class-token fast path) equals the library exactly when no prompt acts."""
    bb = adapter(key)
    model = vpt.create_model(bb, prompt=zero, num_classes=3)
    x = images()
    with torch.no_grad():
        ours = model.forward_head(model.head_features(x), pre_logits=True)
        lib = bb.model.encode_image(x) if key == "open_clip" else bb.model.forward_head(
            bb.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(ours, lib, rtol=0, atol=0)


def _mask(seq_len, drop):
    m = torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool)
    m[..., drop] = False  # nobody attends to these keys
    return m


@pytest.mark.parametrize("key", TOKEN_FAMILIES)
def test_forward_intermediates_attn_mask(key):
    bb = adapter(key)
    x = images()
    L = bb.layout.num_prefix + bb.layout.grid[0] * bb.layout.grid[1]
    mask = _mask(L, [L - 1, L - 2])
    plain = vpt.create_model(bb)
    with torch.no_grad():
        masked = plain.forward_intermediates(x, attn_mask=mask, intermediates_only=True)
        unmasked = plain.forward_intermediates(x, intermediates_only=True)
        assert not torch.allclose(masked[-1], unmasked[-1])  # the mask acts
        if key != "open_clip":  # timm's own forward_intermediates takes attn_mask: equal exactly
            lib = bb.model.forward_intermediates(x, attn_mask=mask, intermediates_only=True)
            for a, b in zip(masked, lib):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    # with prompts in the sequence (and as key/value prefixes), an all-true mask changes nothing
    kinds = [{"kind": "vpt_deep", "num_tokens": 2}] + ([{"kind": "vpt_prefix", "num_tokens": 2}]
                                                       if MATRIX.capable(key, "key_values") else [])
    for prompt in kinds:
        torch.manual_seed(0)
        model = vpt.create_model(bb, prompt=prompt)
        with torch.no_grad():
            ref = model.forward_intermediates(x, intermediates_only=True)
            for m in (torch.ones(1, 1, L, L, dtype=torch.bool), torch.zeros(1, 1, 1, L)):
                got = model.forward_intermediates(x, attn_mask=m, intermediates_only=True)
                for a, b in zip(got, ref):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            dropped = model.forward_intermediates(x, attn_mask=mask, intermediates_only=True)
        assert not torch.allclose(dropped[-1], ref[-1])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_is_refused_with_a_pointer_to_torch_export():
    model = vpt.create_model(adapter("vit"), prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3).eval()
    with pytest.raises(RuntimeError, match=r"torch\.export"):
        torch.jit.script(model)
    x = images(1)
    exported = torch.export.export(model, (x,))  # what the message points to works
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)


FX_PROMPTS = MATRIX.prompts


@pytest.mark.parametrize("key,prompt", MATRIX.cases(TOKEN_FAMILIES, KINDS))  # refused pairs: test_contracts
def test_fx_feature_extraction(key, prompt):
    """timm's test_model_forward_fx / test_model_backward_fx: timm's get_graph_node_names + torchvision's
    create_feature_extractor (train and eval graphs, as timm's _create_fx_model) trace the prompted model (the
    reference path: static control flow) and give its outputs; prompts train through the traced graph."""
    from timm.models._features_fx import get_graph_node_names
    from torchvision.models.feature_extraction import create_feature_extractor
    torch.manual_seed(0)
    model = vpt.create_model(adapter(key), prompt=FX_PROMPTS[prompt], num_classes=3).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert any("blocks.1" in n for n in eval_nodes)  # the library's blocks are nodes of the graph
    fx_model = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                        eval_return_nodes=[eval_nodes[-1]]).eval()
    x = images()
    with torch.no_grad():
        fx_out = list(fx_model(x).values())[0]
        model.fast = False  # the traced path
        reference = model(x)
        model.fast = True
        fast = model(x)
    torch.testing.assert_close(fx_out, reference, rtol=0, atol=0)
    torch.testing.assert_close(fx_out, fast, rtol=1e-5, atol=1e-5)
    if model.prompt is None:
        return
    fx_model.train()  # the train graph (it shares the model's modules: keep the frozen backbone in eval)
    model.train()
    params = dict(model.prompt.named_parameters())
    list(fx_model(x).values())[0].square().sum().backward()
    fx_grads = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad()
    model(x).square().sum().backward()
    for n, p in params.items():
        assert p.grad.abs().sum() > 0
        torch.testing.assert_close(fx_grads[n], p.grad, rtol=1e-4, atol=1e-6)


def test_fx_graph_checks_the_open_clip_input_size():
    """The traced open_clip tower keeps its fixed-size check as a graph node: a wrong size is refused."""
    pytest.importorskip("open_clip")
    from torchvision.models.feature_extraction import create_feature_extractor
    model = vpt.create_model(adapter("open_clip"), prompt=FX_PROMPTS["vpt_deep"], num_classes=3).eval()
    fx_model = create_feature_extractor(model, return_nodes=["head"])
    with pytest.raises(vpt.backbones.BackboneError, match=r"expects \(32, 32\) px input, got \(48, 48\)"):
        fx_model(torch.randn(1, 3, 48, 48))


def test_plain_forward_does_not_ask_is_fx_tracing(monkeypatch):
    """torch's ``is_fx_tracing()`` is also true under torch.export and logs a warning into every run that
    calls it; the FX check asks ``is_fx_symbolic_tracing()`` where torch has it."""
    import torch.fx._symbolic_trace as st
    if not hasattr(st, "is_fx_symbolic_tracing"):
        pytest.skip("this torch has only is_fx_tracing()")

    def refuse():
        raise AssertionError("is_fx_tracing() called")

    monkeypatch.setattr(st, "is_fx_tracing", refuse)
    model = vpt.create_model(adapter("vit"), prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
