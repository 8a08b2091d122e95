"""How the one loop over blocks runs each block with its prompts: named strategies, chosen in one place.

``PromptedModel._encode`` owns the loop: pixels, embedding, the autograd window, :class:`FanOut` and the
intermediates. Each block it hands to one strategy, chosen once per call by :func:`choose_blocks`:

- :class:`ReferenceBlocks`: the definition. Prompt tokens sit in the sequence from their block on and every
  block is the library's own call. The others must equal it (the tests compare them).
- :class:`CheckpointedBlocks`: the reference with lean blocks recomputed in backward (timm's
  ``set_grad_checkpointing`` where the adapter has no fast blocks).
- :class:`MaskedBlocks`: the reference under a caller's attention mask (timm's ``forward_intermediates``
  ``attn_mask``), padded for the prompt tokens in the sequence.
- :class:`TracedBlocks`: the reference with prompt counts as Python ints, for torch.fx symbolic tracing
  (timm's ``get_graph_node_names``, torchvision's ``create_feature_extractor``), which cannot branch on a
  traced shape.
- :class:`FastBlocks`: token prompts whose outputs the next block discards never enter the sequence. They
  join that block's attention as keys/values projected by the block's own weights, which is their whole
  effect, so VPT-deep runs the MLPs on the image tokens only and copies no sequence per block. The last block
  may compute only the queries the head pools, and lean mode recomputes inside the adapter's block.

A strategy's ``step(i, h, P, ctx, t, kv, last)`` runs block ``i`` on ``h`` (B, k+P+N, D), where ``P`` prompt tokens sit
after the ``k`` prefix tokens, with this block's prompt tokens ``t`` (B, P', D) and key/value prefixes
``kv``. It returns the block output and the prompt tokens still in it.
"""
from __future__ import annotations

from typing import Any, Collection, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from .backbones import BackboneAdapter
from .backbones.base import NEVER, EmbedContext, fx_tracing, pad_attn_mask

KV = Optional[Tuple[torch.Tensor, torch.Tensor]]


def strip_prompts(h: torch.Tensor, k: int, num_prompts: int) -> torch.Tensor:
    """(B, k+P+N, D) -> (B, k+N, D): the prompt tokens after the k prefix tokens leave the sequence."""
    if num_prompts == 0:
        return h
    return torch.cat([h[:, :k], h[:, k + num_prompts:]], dim=1)  # (B, k+N, D)


def insert_prompts(h: torch.Tensor, t: torch.Tensor, k: int, num_prompts: int) -> torch.Tensor:
    """The ``num_prompts`` prompt tokens in ``h`` replaced by ``t`` (B, P', D): (B, k+P'+N, D)."""
    return torch.cat([h[:, :k], t.to(h.dtype), h[:, k + num_prompts:]], dim=1)  # (B, k+P'+N, D)


class ReferenceBlocks:
    """Prompt tokens in the sequence, the library's block call: the definition every strategy equals."""

    static_count = False  # True: the prompt count comes from the prompt, not from a (traced) shape

    def __init__(self, backbone: BackboneAdapter, prompt: Any):
        self.bb, self.prompt, self.k = backbone, prompt, backbone.layout.num_prefix

    def step(self, i: int, h: torch.Tensor, P: int, ctx: EmbedContext, t: Optional[torch.Tensor], kv: KV,
             last: bool) -> Tuple[torch.Tensor, int]:
        if t is not None:
            h, P = insert_prompts(h, t, self.k, P), (int(self.prompt.num_tokens) if self.static_count else t.shape[1])
        mask = self.prompt.key_mask(i, P, h.shape[1]) if self.prompt is not None else None
        return self.call(i, h, ctx, kv, mask, P), P

    def call(self, i: int, h: torch.Tensor, ctx: EmbedContext, kv: KV, mask: Optional[torch.Tensor],
             P: int) -> torch.Tensor:
        return self.bb.block(i, h, ctx, kv, key_mask=mask)


class CheckpointedBlocks(ReferenceBlocks):
    """The reference; blocks in ``lean_blocks`` are recomputed in backward instead of keeping activations."""

    def __init__(self, backbone: BackboneAdapter, prompt: Any, lean_blocks: Collection[int]):
        super().__init__(backbone, prompt)
        self.lean_blocks = lean_blocks

    def call(self, i, h, ctx, kv, mask, P):
        if i in self.lean_blocks and h.requires_grad:
            return checkpoint(self.bb.block, i, h, ctx, kv, mask, use_reentrant=False)
        return self.bb.block(i, h, ctx, kv, key_mask=mask)


class MaskedBlocks(ReferenceBlocks):
    """The reference under a caller's ``attn_mask`` over the library's [prefix | patches] sequence; prompt tokens
    attend and are attended freely."""

    def __init__(self, backbone: BackboneAdapter, prompt: Any, attn_mask: torch.Tensor, traced: bool = False):
        super().__init__(backbone, prompt)
        self.attn_mask, self.static_count = attn_mask, traced

    def call(self, i, h, ctx, kv, mask, P):
        return self.bb.block(i, h, ctx, kv, key_mask=mask, attn_mask=pad_attn_mask(self.attn_mask, self.k, P))


class TracedBlocks(ReferenceBlocks):
    """The reference under torch.fx symbolic tracing: static control flow, prompt counts as Python ints."""

    static_count = True


class FastBlocks:
    """Token prompts whose outputs are discarded run as keys/values only; the last block may compute only the
    first ``last_queries`` tokens; blocks in ``lean_blocks`` recompute their MLPs in backward."""

    def __init__(self, backbone: BackboneAdapter, prompt: Any, lean_blocks: Collection[int] = (),
                 last_queries: Optional[int] = None):
        self.bb, self.prompt, self.k = backbone, prompt, backbone.layout.num_prefix
        self.lean_blocks, self.last_queries = lean_blocks, last_queries

    def step(self, i, h, P, ctx, t, kv, last):
        nq = self.last_queries if last else None
        lean = i in self.lean_blocks
        if t is not None and (last or self.prompt.has_tokens(i + 1)):  # the next block discards these outputs
            h = strip_prompts(h, self.k, P)  # prompts carried from an earlier block leave the sequence here
            h, P = self.tokens_as_kv(i, h, ctx, t, kv, nq, lean), 0
        else:
            if t is not None:
                h, P = insert_prompts(h, t, self.k, P), t.shape[1]
            mask = self.prompt.key_mask(i, P, h.shape[1]) if self.prompt is not None else None
            h = self.bb.block(i, h, ctx, kv, key_mask=mask, num_queries=nq, lean=lean)
        return h, (0 if nq is not None else P)  # with nq, only the first nq (prefix) tokens remain

    def tokens_as_kv(self, i: int, h: torch.Tensor, ctx: EmbedContext, t: torch.Tensor, kv: KV,
                     nq: Optional[int], lean: bool) -> torch.Tensor:
        """Block ``i`` on h (B, k+N, D) with prompt tokens t (B, P, D) as keys/values only."""
        bb, prompt, k = self.bb, self.prompt, self.k
        run = t.shape[0] if t.stride(0) == 0 else prompt.token_runs(i)
        table = None if run else prompt.token_table(i)
        if table is not None:  # per-sample rows of T tasks' tokens: project the T tasks' tokens once, gather
            tab, index = table
            tk, tv = bb.token_kv(i, tab)  # (T, P, A)
            tk, tv = tk.index_select(0, index), tv.index_select(0, index)  # (B, P, A)
        elif run:  # runs of `run` samples share their prompt (one for the whole batch): project each once
            pairs = [bb.token_kv(i, t[j:j + 1]) for j in range(0, t.shape[0], run)]
            if len(pairs) == 1:  # one prompt for the batch: stays a stride-0 view (the block joins it once)
                tk, tv = (p.expand(t.shape[0], -1, -1) for p in pairs[0])  # (B, P, A)
            else:
                tk = torch.cat([k_.expand(run, -1, -1) for k_, _ in pairs])  # (B, P, A)
                tv = torch.cat([v_.expand(run, -1, -1) for _, v_ in pairs])
        else:
            tk, tv = bb.token_kv(i, t)
        Pkv = 0
        if kv is not None:
            Pkv = kv[0].shape[1]
            tk, tv = torch.cat([kv[0].to(tk.dtype), tk], dim=1), torch.cat([kv[1].to(tv.dtype), tv], dim=1)
        Pt = t.shape[1]
        mask = prompt.key_mask(i, Pt, h.shape[1] + Pt)  # keys [prefix kv | seq prefix | tokens | patches]
        if mask is not None:  # -> the order keys have here: [prefix kv | tokens | seq prefix | patches]
            mask = torch.cat([mask[:, :Pkv], mask[:, Pkv + k:Pkv + k + Pt], mask[:, Pkv:Pkv + k],
                              mask[:, Pkv + k + Pt:]], dim=1)
        return bb.block(i, h, ctx, (tk, tv), key_mask=mask, num_queries=nq, lean=lean)


def choose_blocks(backbone: BackboneAdapter, prompt: Any, *, fast: bool, attn_mask: Optional[torch.Tensor] = None,
                  lean_blocks: Collection[int] = (), last_queries: Optional[int] = None,
                  take: Collection[int] = ()):
    """The one place a block strategy is chosen, first match wins: a caller's attention mask (masked), torch.fx
    tracing (traced), fast blocks where the adapter has them and ``fast`` is on, lean blocks (checkpointed),
    else the reference. ``last_queries`` applies on the fast path only, when a prompt is in the sequence (with
    none the blocks stay the library's own, so zero prompts are library-exact) and no intermediates are taken."""
    traced = fx_tracing()
    if attn_mask is not None:
        return MaskedBlocks(backbone, prompt, attn_mask, traced=traced)
    if traced:
        return TracedBlocks(backbone, prompt)
    if fast and backbone.supports_fast_blocks:
        in_sequence = (prompt is not None and (prompt.uses_tokens or prompt.uses_kv)
                       and prompt.first_layer < backbone.layout.depth)
        return FastBlocks(backbone, prompt, lean_blocks, last_queries if in_sequence and not take else None)
    if lean_blocks:
        return CheckpointedBlocks(backbone, prompt, lean_blocks)
    return ReferenceBlocks(backbone, prompt)


class FanOut:
    """K copies of the batch from the first prompted block on (K-major, (K*B, ...)), one per prompt set
    (``PromptedModel.forward_features_sets``: one batch under K prompt sets): the embedding and the blocks
    before it run once. K=1: no copies."""

    def __init__(self, copies: int, prompt: Any):
        self.copies = copies
        self.at = max(prompt.first_layer if prompt is not None else NEVER, 0) if copies > 1 else None

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """Before pixel prompts (they act on the image, so nothing before them is shared)."""
        if self.at is None:
            return x
        self.at = None
        return x.repeat(self.copies, 1, 1, 1)  # (K*B, C, H, W)

    def before_block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i != self.at:
            return h
        self.at = None
        return h.repeat(self.copies, 1, 1)  # (K*B, k+N, D): from here each copy has its prompt

    def end(self, h: torch.Tensor) -> torch.Tensor:
        """After the loop: copies still owed when no block was prompted."""
        if self.at is None:
            return h
        self.at = None
        return h.repeat(self.copies, 1, 1)  # (K*B, k+N, D)
