"""A prompted classifier (vpt_deep, tiny ViT) exports to TorchScript and runs under torch.compile with the
same outputs as eager PyTorch."""
import os
import time
import warnings

import pytest
import torch

import vpt

from helpers import TINY_VIT, TINY_VIT_NAME


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = vpt.create_model(TINY_VIT_NAME, prompt={"kind": "vpt_deep", "num_tokens": 4}, num_classes=3,
                         pretrained=False, model_kwargs=TINY_VIT)
    with torch.no_grad():  # non-trivial prompts and head, so a dropped prompt would change the logits
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_prompts_matter(model, x):
    plain = vpt.create_model(TINY_VIT_NAME, num_classes=3, pretrained=False, model_kwargs=TINY_VIT).eval()
    plain.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max() > 1e-3


def test_torchscript_export_round_trip(model, x, tmp_path):
    with torch.no_grad():
        ref = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch >= 2.9 marks TorchScript deprecated; it still works
            traced = torch.jit.trace(model, x, check_trace=False)
            path = tmp_path / "vpt_deep.pt"
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path))
        x2 = torch.randn(3, 3, 32, 32)  # another batch size through the traced graph
        torch.testing.assert_close(loaded(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(x2), model(x2), rtol=1e-5, atol=1e-5)
    assert ref.shape == (2, 3)


@pytest.mark.slow
def test_torch_compile_matches_eager(model, x):
    """Dynamo captures the whole prompted forward in one graph (fullgraph=True: no graph breaks); the
    aot_eager backend runs that graph without C++ code generation, so the test stays fast on CPU."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not os.environ.get("VPT_SLOW_TESTS"),
                    reason="SLOW: inductor C++ compilation takes 1-2 min on 2 CPU cores; set VPT_SLOW_TESTS=1")
def test_torch_compile_inductor_matches_eager(model, x):
    torch._dynamo.reset()
    t0 = time.perf_counter()
    compiled = torch.compile(model)  # default backend (inductor)
    with torch.no_grad():
        out = compiled(x)
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    print(f"inductor compile + first call: {time.perf_counter() - t0:.1f}s")
