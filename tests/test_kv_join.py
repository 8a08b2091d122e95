"""Prompted attention joins the prompts' keys/values to the sequence's in ONE contiguous copy per block (not a
strided copy of the key half and another of the value half), and a mixed batch of tasks projects each task's
prompt tokens once (not once per sample). Exactness against the reference formulation, values and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import vpt
from vpt.backbones.timm_vit import attention_with_prefix, prefixed_kv
from vpt.multitask import MultiTaskModel


class CatShapes(TorchDispatchMode):
    """Output shapes of every aten.cat dispatched inside."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.cat:
            self.shapes.append(tuple(out.shape))
        return out


def two_cats(kv, pk, pv):
    """The formulation before: keys and values are strided halves of kv, each concatenated on its own."""
    k, v = kv.chunk(2, dim=-1)
    return torch.cat([pk.to(k.dtype), k], dim=1), torch.cat([pv.to(v.dtype), v], dim=1)


@pytest.mark.parametrize("shared", [True, False], ids=["one_prefix_for_the_batch", "per_sample"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prefixed_kv_equals_two_concatenations(shared, dtype):
    g = torch.Generator().manual_seed(0)
    B, P, N, A = 3, 2, 5, 4
    kv = torch.randn(B, N, 2 * A, generator=g, dtype=dtype, requires_grad=True)
    if shared:
        base_k = torch.randn(1, P, A, generator=g, requires_grad=True)
        base_v = torch.randn(1, P, A, generator=g, requires_grad=True)
        pk, pv = base_k.expand(B, -1, -1), base_v.expand(B, -1, -1)
    else:
        base_k = torch.randn(B, P, A, generator=g, requires_grad=True)
        base_v = torch.randn(B, P, A, generator=g, requires_grad=True)
        pk, pv = base_k, base_v
    w = torch.randn(B, P + N, A, generator=g, dtype=dtype)

    def grads(fn):
        k, v = fn(kv, pk, pv)
        assert k.dtype == dtype and k.shape == (B, P + N, A)
        ((k * w).sum() + (v * w * 2).sum()).backward()
        out = (k.detach().clone(), v.detach().clone(), kv.grad.clone(), base_k.grad.clone(), base_v.grad.clone())
        for t in (kv, base_k, base_v):
            t.grad = None
        return out

    for a, b in zip(grads(prefixed_kv), grads(two_cats)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # the batch sum of an expanded prefix may reorder
    k, v = prefixed_kv(kv, None, None)  # no prefix: the sequence's own halves, no copy
    assert k.data_ptr() == kv.data_ptr() and torch.equal(torch.cat([k, v], -1), kv)


def test_wrapped_qkv_equals_plain_linear():
    """A qkv that is not a plain Linear (LoRA-wrapped) is called whole; both paths give the same attention."""
    from timm.layers import Attention
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(x)

    x, pk, pv = torch.randn(2, 5, 16), torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    plain = attention_with_prefix(attn, x, pk, pv, num_queries=2)
    attn.qkv = Wrapped(attn.qkv)
    torch.testing.assert_close(attention_with_prefix(attn, x, pk, pv, num_queries=2), plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bb_key", ["vit", "open_clip"])
def test_one_contiguous_kv_copy_per_prompted_block(matrix, bb_key):
    """VPT-deep on the fast path: every block copies keys|values once, (B, P+N, 2A); no cat makes a key-only or
    value-only (B, P+N, A) tensor."""
    if bb_key not in matrix.backbones:
        pytest.skip(f"{bb_key} not installed")
    model = matrix.model(bb_key, "vpt_deep", num_classes=3).eval()
    bb = model.backbone
    depth, A, P = bb.layout.depth, bb.kv_dim(), model.prompt.num_tokens
    x = torch.randn(2, 3, *bb.data_config().input_size[1:])
    with torch.no_grad(), CatShapes() as cats:
        model(x)
    L = bb.layout.num_prefix + bb.layout.grid[0] * bb.layout.grid[1] + P
    kv_cats = [s for s in cats.shapes if len(s) == 3 and s[0] == 2 and s[1] == L]
    assert kv_cats == [(2, L, 2 * A)] * depth, cats.shapes


def test_mixed_batch_projects_each_task_once(matrix, monkeypatch):
    """8 samples of 2 tasks: the prompt tokens' keys/values are projected for 2 tasks per block, not 8 samples,
    and the outputs equal each task run alone."""
    bb = matrix.adapter("vit")
    torch.manual_seed(0)
    tasks = {"a": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3),
             "b": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": 3}, num_classes=2)}
    mt = MultiTaskModel(tasks)
    names = ["a", "b", "b", "a", "a", "b", "a", "b"]
    x = torch.randn(len(names), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rows, token_kv = [], type(bb).token_kv

    def counting(self, i, t):
        rows.append(t.shape[0])
        return token_kv(self, i, t)
    monkeypatch.setattr(type(bb), "token_kv", counting)
    with torch.no_grad():
        out = mt(x, names)
        monkeypatch.setattr(type(bb), "token_kv", token_kv)
        for n, m in tasks.items():
            m.eval()
            sel = [i for i, t in enumerate(names) if t == n]
            alone = m(x[sel])
            for j, i in enumerate(sel):
                torch.testing.assert_close(out[i], alone[j], rtol=1e-5, atol=1e-5)
    assert rows and set(rows) == {2}, rows


def test_mixed_batch_gradients_match_reference(matrix):
    """Training through a per-sample mix (gathered key/value rows): gradients equal the in-sequence reference."""
    bb = matrix.adapter("vit")
    torch.manual_seed(0)
    tasks = {"a": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3),
             "b": vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3)}
    mt = MultiTaskModel(tasks)
    names = ["a", "b", "b", "a"]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])

    def grads(fast):
        for m in tasks.values():
            m.fast = fast
            m.zero_grad(set_to_none=True)
        F.cross_entropy(torch.stack(mt(x, names)), y).backward()
        return {f"{n}.{k}": p.grad.clone() for n, m in tasks.items() for k, p in m.named_parameters()
                if p.requires_grad and p.grad is not None}

    fast, ref = grads(True), grads(False)
    assert fast.keys() == ref.keys() and any("prompt" in k for k in fast)
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-4, atol=1e-6, msg=k)
