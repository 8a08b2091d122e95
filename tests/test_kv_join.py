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


# --- timm Eva (RoPE attention): fast blocks and key/value prefixes against the library's own blocks ---------
_EVA = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
EVAS = {
    # EVA-02: fused qkv with q/v biases (k: a zero buffer), SwiGLU, RoPE after the class token
    "eva02": ("timm:eva02_tiny_patch14_224", dict(_EVA, ref_feat_shape=(4, 4))),
    # separate q/k/v projections, a register token (2 prefix tokens), QK-norm, layer scale
    "eva02_separate": ("timm:eva02_tiny_patch14_224", dict(_EVA, ref_feat_shape=(4, 4), qkv_fused=False,
                                                           num_reg_tokens=1, qk_norm=True, init_values=0.5)),
    # the fused bias added after the matmul (qkv_bias_separate) and half-rotation RoPE
    "eva02_bias_after": ("timm:eva02_tiny_patch14_224", dict(_EVA, ref_feat_shape=(4, 4), rope_rotate_half=True)),
    # AttentionRope with a RoPE table per block (mixed mode), gated (set below)
    "rope_mixed": ("timm:vit_small_patch16_rope_mixed_224", dict(_EVA, init_values=1.0)),
}


@pytest.fixture(scope="module")
def evas():
    built = {}
    for key, (name, kw) in EVAS.items():
        bb = vpt.create_backbone(name, pretrained=False, init_seed=0, model_kwargs=dict(kw))
        g = torch.Generator().manual_seed(1)
        for blk in bb.model.blocks:
            blk.attn.fused_attn = True  # the library's SDPA call (what the prefix reference below hooks)
            if key == "eva02_bias_after":
                blk.attn.qkv_bias_separate = True
            if key == "rope_mixed":  # a sigmoid gate on the attention output (timm's gated attention)
                torch.manual_seed(7)
                blk.attn.gate = torch.nn.Linear(32, blk.attn.num_heads * blk.attn.head_dim)
            for n, p in blk.attn.named_parameters():
                if "bias" in n:  # zero at init: make the bias paths count
                    p.data.copy_(0.1 * torch.randn(p.shape, generator=g))
        assert bb.supports_fast_blocks and bb.capabilities.key_values is None
        built[key] = bb
    return built


def _embedded(bb, B=2):
    x = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h, ctx = bb.embed(x)
    return h.requires_grad_(), ctx


def _grads(out, *inputs):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    return [out.detach()] + list(torch.autograd.grad((out * w).sum(), inputs))


@pytest.mark.parametrize("key", list(EVAS))
@pytest.mark.parametrize("block", [0, 2])
@pytest.mark.parametrize("queries", [None, "prefix"])
def test_eva_prompts_as_keys_values_equal_library_block(evas, key, block, queries):
    """VPT-deep on Eva's fast block: prompt tokens t as keys/values only equal the library's EvaBlock on the
    sequence [prefix | t | patches] (identity RoPE for t), the prompt rows dropped; values and gradients of the
    tokens and the prompts, also with queries from the prefix tokens only (the last block)."""
    from vpt.encode import insert_prompts, strip_prompts
    bb = evas[key]
    h, ctx = _embedded(bb)
    k, P = bb.layout.num_prefix, 3
    t = torch.randn(h.shape[0], P, h.shape[2], generator=torch.Generator().manual_seed(4), requires_grad=True)
    nq = None if queries is None else k
    fast = bb.block(block, h, ctx, bb.token_kv(block, t), num_queries=nq)
    ref = strip_prompts(bb.block(block, insert_prompts(h, t, k, 0), ctx), k, P)  # the library block
    if nq is not None:
        ref = ref[:, :nq]
    assert fast.shape == ref.shape
    for a, b in zip(_grads(fast, h, t), _grads(ref, h, t)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", list(EVAS))
def test_eva_prefix_equals_library_attention_with_extra_keys(evas, key, monkeypatch):
    """Key/value prefixes on Eva: the composed block (one contiguous key|value copy, one RoPE pass with identity
    rotations for the prefix) equals the library's EvaBlock whose attention gets the prefix keys (after k_norm,
    no rotation) and values concatenated in front, each on its own, right before SDPA; values and gradients."""
    bb = evas[key]
    h, ctx = _embedded(bb)
    B, P, A = h.shape[0], 2, bb.kv_dim()
    g = torch.Generator().manual_seed(5)
    pk = torch.randn(B, P, A, generator=g, requires_grad=True)
    pv = torch.randn(B, P, A, generator=g, requires_grad=True)
    fast = bb.block(1, h, ctx, (pk, pv))
    blk, sdpa = bb.model.blocks[1], F.scaled_dot_product_attention
    H, Dh = blk.attn.num_heads, blk.attn.head_dim

    def with_prefix(q, k, v, attn_mask=None, **kw):
        heads = (lambda t: t.reshape(B, P, H, Dh).transpose(1, 2))  # (B, H, P, Dh)
        k = torch.cat([blk.attn.k_norm(heads(pk)), k], dim=2)
        v = torch.cat([heads(pv), v], dim=2)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    rope = ctx.extra["rope"][1] if bb._mixed else ctx.extra["rope"]
    monkeypatch.setattr(F, "scaled_dot_product_attention", with_prefix)
    ref = blk(h, rope=rope)
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    for a, b in zip(_grads(fast, h, pk, pv), _grads(ref, h, pk, pv)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", list(EVAS))
@pytest.mark.parametrize("prompt", [{"kind": "vpt_deep", "num_tokens": 3}, {"kind": "vpt_prefix", "num_tokens": 3}],
                         ids=["vpt_deep", "vpt_prefix"])
def test_eva_fast_path_equals_reference_with_input_gradients(evas, key, prompt):
    """Whole models on Eva: the fast path (prompts as keys/values, class-token queries in the last block) equals
    the reference path (prompts in the sequence, every block the library's own; prefixes on every token):
    outputs, the input image's gradient and the prompts' gradients, fp32 at 1e-5."""
    torch.manual_seed(0)
    model = vpt.create_model(evas[key], prompt=prompt, num_classes=3, head={"pool": "cls"}).train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))

    def run(fast):
        model.fast = fast
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        out = model(xi)
        (out * torch.arange(1.0, 4.0)).sum().backward()
        return [out.detach(), xi.grad] + [p.grad for p in model.prompt.parameters()]

    fast, ref = run(True), run(False)
    assert len(fast) > 2 and all(g is not None for g in fast)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
