"""The fast paths compute what the reference path computes.

Fast: VPT-deep prompts that the next block replaces take part as keys/values only; the last block computes
the prefix tokens alone when the head pools nothing else; lean mode recomputes MLP activations. Reference
(``model.fast = False``): prompts always in the sequence, every block computes every token.
"""
import pytest
import torch

import vpt
import vpt.config
import vpt.encode
from helpers import BACKBONES, MATRIX
from vpt.multitask import MultiTaskModel

# the families whose adapters declare fast blocks, under every prompt shape the fast paths special-case:
# deep prompts replaced by the next block, prompts leaving the sequence mid-way (blocks 0 and 2), projected
# prompts with dropout, shallow prompts carried through, key/value prefixes, and no prompt
FAST = [b for b in BACKBONES if MATRIX.capable(b, "fast_blocks")]
PROMPTS = ["vpt_deep", "vpt_shallow", "vpt_deep_gaps", "vpt_deep_proj", "vpt_prefix", "none"]


def run(model, x, y, fast, lean=False, seed=0):
    model.fast = fast
    model.set_lean(lean)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same prompt-dropout masks in both paths
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("bb_key,prompt_key", MATRIX.cases(FAST, PROMPTS))
def test_fast_path_equals_reference(matrix, bb_key, prompt_key):
    model = matrix.model(bb_key, prompt_key, num_classes=3)
    model.train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    ref_out, ref_grads = run(model, x, y, fast=False)
    for lean in (False, True):
        out, grads = run(model, x, y, fast=True, lean=lean)
        # fp32, a different summation order (keys/values joined, the class token alone in the last block):
        # 1e-5 like the other exactness tests (features: one element 1.2e-6 apart on vit_reg, below)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for n in grads:
            torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=f"{n} (lean={lean})")
    model.eval()
    with torch.no_grad():  # features and intermediates (all tokens) agree as well
        model.fast = True
        f, inter = model.forward_intermediates(x, output_fmt="NLC")
        model.fast = False
        rf, rinter = model.forward_intermediates(x, output_fmt="NLC")
    torch.testing.assert_close(f, rf, rtol=1e-5, atol=1e-5)  # 1 of 2432 features 1.2e-6 apart on vit_reg
    for a, b in zip(inter, rinter):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fast_path_skips_work(matrix):
    """Deep prompts never enter the sequence, and the last block computes the class token only."""
    model = matrix.model("vit", "vpt_deep", num_classes=3)
    lengths = []
    hooks = [blk.mlp.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1]))
             for blk in model.backbone.model.blocks]
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
            model.fast = False
            model(torch.randn(2, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    n = 1 + 16  # class token + 4x4 patches
    assert lengths == [n, n, 1, n + 2, n + 2, n + 2]


def test_lean_mode_keeps_fewer_activations(matrix):
    """Lean mode saves fewer tensors for backward (the MLPs' hidden activations are recomputed)."""
    model = matrix.model("vit", "vpt_deep", num_classes=3).train()
    x = torch.randn(4, 3, 32, 32)

    def saved_bytes(lean):
        model.set_lean(lean)
        storages = {}

        def pack(t):
            if not isinstance(t, torch.nn.Parameter):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x).sum()
        loss.backward()
        return sum(storages.values())
    full, half, off = saved_bytes(True), saved_bytes(0.5), saved_bytes(False)
    assert full < half < off and full < 0.8 * off
    assert model.set_lean(0.5)._lean_blocks() == {1} and model.set_lean(1)._lean_blocks() == {0, 1, 2}
    with pytest.raises(vpt.config.ConfigError, match="share of blocks"):
        model.set_lean(2)


def test_mixed_batch_fast_equals_reference(matrix):
    """Per-sample prompts with padding masks: the key/value form and the in-sequence form agree."""
    bb = matrix.adapter("vit_reg")
    torch.manual_seed(0)
    tasks = {"a": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3),
             "b": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": 4}, num_classes=2),
             "lin": vpt.create_model(bb, num_classes=4)}
    mt = MultiTaskModel(tasks)
    names = ["a", "b", "base", "lin", "b", "a"]
    x = torch.randn(len(names), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast = mt(x, names)
        for m in tasks.values():
            m.fast = False
        ref = mt(x, names)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vpt_deep", "vpt_prefix"])
def test_compile_one_graph_per_mode(matrix, kind):
    """torch.compile(fullgraph=True): no graph break; training steps reuse one graph, eval adds one,
    and switching back to training compiles nothing new. Graph capture is dynamo's, whatever the backend:
    lean VPT-deep (activation checkpointing) also goes through AOT autograd; prefix uses the plain eager
    backend, which keeps the test fast on CPU."""
    import torch._dynamo as dynamo
    dynamo.reset()
    dynamo.utils.counters.clear()
    model = vpt.create_model(matrix.adapter("vit"), prompt={"kind": kind, "num_tokens": 2}, num_classes=3)
    model.set_lean(kind == "vpt_deep")
    compiled = torch.compile(model, backend="aot_eager" if kind == "vpt_deep" else "eager", fullgraph=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    graphs = []
    for _ in range(2):
        model.train()
        for _ in range(3):
            opt.zero_grad()
            x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
            torch.nn.functional.cross_entropy(compiled(x), y).backward()
            opt.step()
            graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
        model.eval()
        with torch.no_grad():
            compiled(torch.randn(4, 3, 32, 32))
        graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs == [1, 1, 1, 2, 2, 2, 2, 2], graphs
    assert not dynamo.utils.counters["graph_break"]


@pytest.mark.slow
def test_train_lean_matches_default(tmp_path, one_thread, monkeypatch):
    """``train.lean: true`` trains to the same result (the recomputed activations are the same numbers)."""
    import json
    import os

    from vpt.model import PromptedModel
    calls, set_lean = [], PromptedModel.set_lean
    monkeypatch.setattr(PromptedModel, "set_lean", lambda self, mode=True: calls.append(mode) or set_lean(self, mode))

    from helpers import make_image_folder, tiny_recipe
    from safetensors.torch import load_file
    from vpt.cli import main
    data = make_image_folder(tmp_path / "data", per_class=6)
    runs = {}
    for lean in (0.0, 1.0):
        out = str(tmp_path / f"lean{lean}")
        recipe = tiny_recipe(tmp_path / f"r{lean}.yaml", epochs=1, lean=lean)
        assert main(["train", "-c", recipe, "--data", data, "--output", out]) == 0
        runs[lean] = (json.load(open(os.path.join(out, "results.json"))),
                      load_file(os.path.join(out, "last", "adapter_model.safetensors")))
    assert calls == [1.0]  # the lean run really ran lean
    assert runs[1.0][0]["val"]["top1"] == runs[0.0][0]["val"]["top1"]
    for k, v in runs[0.0][1].items():
        torch.testing.assert_close(runs[1.0][1][k], v, rtol=1e-4, atol=1e-6)


def test_lean_without_fast_blocks_checkpoints_whole_blocks(monkeypatch):
    """Eva with post-norm blocks has no fast blocks: lean mode checkpoints whole blocks and still trains identically."""
    import vpt.encode
    calls, checkpoint = [], vpt.encode.checkpoint
    monkeypatch.setattr(vpt.encode, "checkpoint", lambda *a, **k: calls.append(a[1]) or checkpoint(*a, **k))
    name, kw = BACKBONES["eva02_rope"]
    bb = vpt.create_backbone(name, pretrained=False, init_seed=0, model_kwargs=dict(kw, use_post_norm=True))
    assert not bb.supports_fast_blocks and "EvaBlockPostNorm" in bb.prefix_refusal
    torch.manual_seed(0)
    model = vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    out, grads = run(model, x, y, fast=True, lean=False)
    assert calls == []
    lean_out, lean_grads = run(model, x, y, fast=True, lean=True)
    assert calls == [0, 1, 2]  # every block under checkpoint
    torch.testing.assert_close(lean_out, out, rtol=0, atol=0)
    for n in grads:
        torch.testing.assert_close(lean_grads[n], grads[n], rtol=1e-6, atol=1e-8)
