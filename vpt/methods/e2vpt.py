"""E2VPT (Han et al., ICCV 2023): VPT token prompts (the model's ``vpt_deep`` / ``vpt_shallow`` prompt) plus
learnable key-value prompts joined to every block's keys and values, with the paper's pruning of the visual
prompts: token-wise (a whole prompt token) and segment-wise (slices of a token's channels).

A prompt + method combination: the model's prompt stays a VPT token prompt, and the method composes it with
vpt's key/value prefixes (``vpt_prefix``'s module, the same prefixed-attention path; with ``share_kv``, the
reference code's default, one tensor per block serves as both keys and values) into one prompt module.
E2VPT has no zero start: its prompts join attention from the first step, as VPT's do. What it defines
instead, and the tests check: a pruned token is a zero token in every prompted block; a pruned segment
zeroes its channels; the importance score of a token (segment) is the gradient of the loss with respect
to a multiplicative mask on it, at mask 1.

Pruning (:func:`prune`) follows the reference code: masks of ones on every prompt token (shared by the
prompted blocks) and on each token's ``segments`` channel groups, whose channel c belongs to segment
``c % segments`` (the reference tiles its piece mask); the score of a mask is its gradient averaged over the
given batches; the ``token_prune`` share of tokens with the lowest scores, and then the ``segment_prune``
share of each kept token's segments, are masked. One difference: the score here is the gradient's magnitude
per batch (as in Michel et al.'s head-importance code, on which the reference's scoring is modelled); the
reference ranks the signed gradient, which (to first order) masks first the tokens whose removal raises the
loss most. The chosen masks are written into the method's config (``pruned_tokens``, ``pruned_segments``), so
the artifact carries them; the reference then retrains from the start with the masks ("rewind"): train again
with those two fields set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Checked, ConfigError, option
from ..prompts.base import PromptModule, build_prompt, xavier_bound
from ..registry import METHODS
from .base import MethodModule

TOKEN_KINDS = ("vpt_deep", "vpt_shallow")


@dataclass
class E2VPTConfig(Checked):
    num_kv: int = option(5, "key-value prompts joined to each block's keys and values", range=(1, 4096))
    kv_dropout: float = option(0.0, "dropout on the key-value prompts", range=(0.0, 1.0, "[)"))
    share_kv: bool = option(False, "one tensor per block as both the keys and the values (the reference code's "
                                   "default, SHARE_PARAM_KV); false: separate keys and values (vpt_prefix's)")
    segments: int = option(16, "channel segments per visual prompt token for segment-wise pruning (the "
                                "reference's 16); must divide the width", range=(1, 65536))
    token_prune: float = option(0.0, "share of visual prompt tokens prune() masks (lowest importance first)",
                                range=(0.0, 1.0, "[)"))
    segment_prune: float = option(0.0, "share of each kept token's segments prune() masks", range=(0.0, 1.0, "[)"))
    pruned_tokens: Optional[List[int]] = option(None, "masked visual prompt tokens (written by prune(); set it "
                                                      "to retrain with the masks, the reference's rewind)",
                                                range=(0, 4095))
    pruned_segments: Optional[List[int]] = option(None, "masked segments, as token * segments + segment "
                                                        "(written by prune())", range=(0, 1 << 30))


def _masked(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """t (B, P, D) * keep (P, D); a batch-shared t (stride 0, as VPT's tokens come) stays batch-shared, so the
    fast blocks still project its keys/values once."""
    if not isinstance(t, torch.fx.Proxy) and t.stride(0) == 0:
        return (t[:1] * keep).expand(t.shape[0], -1, -1)  # (B, P, D), stride 0 over the batch
    return t * keep


class SharedKeyValue(PromptModule):
    """One (P, A) tensor per block used as both its keys and its values (the reference's SHARE_PARAM_KV), with
    vpt_prefix's init; dropout drawn apart for the keys and the values, as the reference does."""

    uses_kv = True

    def __init__(self, config: E2VPTConfig, depth: int, kv_dim: int, bound: float):
        super().__init__(config)
        self.num_prefix, self.num_tokens = int(config.num_kv), 0
        self.prefix = nn.ParameterDict({str(i): nn.Parameter(torch.empty(self.num_prefix, kv_dim))
                                        for i in range(depth)})
        for p in self.prefix.values():
            nn.init.uniform_(p, -bound, bound)
        self.dropout = nn.Dropout(config.kv_dropout) if config.kv_dropout > 0 else nn.Identity()

    @property
    def first_layer(self) -> int:
        return 0

    def kv(self, i: int, batch_size: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        p = self.prefix[str(i)]  # (P, A)
        return (self.dropout(p).unsqueeze(0).expand(batch_size, -1, -1),  # keys (B, P, A)
                self.dropout(p).unsqueeze(0).expand(batch_size, -1, -1))  # values (B, P, A)

    def parameter_layers(self) -> Dict[str, int]:
        return {f"prefix.{i}": int(i) for i in self.prefix}


class E2VPTPrompt(PromptModule):
    """The model's VPT token prompt (``visual``) + key-value prompts (``keyvalue``, a vpt_prefix module) +
    the pruning masks over the visual tokens."""

    uses_tokens = True
    uses_kv = True

    def __init__(self, config: E2VPTConfig, visual: PromptModule, keyvalue: PromptModule, dim: int):
        super().__init__(config)
        self.visual, self.keyvalue = visual, keyvalue
        self.num_tokens, self.num_prefix = visual.num_tokens, keyvalue.num_prefix
        self.dim = dim
        self.register_buffer("keep", None, persistent=False)  # (P, D) of 0 / 1, None: nothing pruned
        self.gates: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # while prune() scores: (P,), (P, S)
        self.set_masks(config.pruned_tokens, config.pruned_segments)

    @property
    def first_layer(self) -> int:
        return min(self.visual.first_layer, self.keyvalue.first_layer)

    def set_masks(self, tokens: Optional[List[int]], segments: Optional[List[int]]) -> None:
        P, S = self.num_tokens, int(self.config.segments)
        bad = [j for j in tokens or () if not 0 <= j < P] + [j for j in segments or () if not 0 <= j < P * S]
        if bad:
            raise ConfigError(f"method 'e2vpt': pruned_tokens / pruned_segments {bad} out of range for {P} prompt "
                              f"tokens x {S} segments; use indices in 0..{P - 1} (tokens) and 0..{P * S - 1} "
                              f"(token * segments + segment)")
        if not tokens and not segments:
            self.keep = None
            return
        token_keep = torch.ones(P)
        token_keep[list(tokens or ())] = 0
        segment_keep = torch.ones(P * S)
        segment_keep[list(segments or ())] = 0
        self.keep = self._mask(token_keep, segment_keep.view(P, S))

    def _mask(self, token: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        """(P,) and (P, S) -> (P, D): channel c of token j is kept by token[j] * segment[j, c % S]."""
        return token[:, None] * segment.repeat(1, self.dim // segment.shape[1])  # (P, D)

    def has_tokens(self, i: int) -> bool:
        return self.visual.has_tokens(i)

    def tokens(self, i: int, batch_size: int) -> Optional[torch.Tensor]:
        t = self.visual.tokens(i, batch_size)  # (B, P, D)
        if t is None:
            return None
        if self.gates is not None:
            t = t * self._mask(*self.gates).to(t.dtype)  # the masks as leaves: their gradients are the scores
        if self.keep is not None:
            t = _masked(t, self.keep.to(t.dtype))
        return t

    def kv(self, i: int, batch_size: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return self.keyvalue.kv(i, batch_size)

    def parameter_layers(self) -> Dict[str, int]:
        out = {f"visual.{n}": v for n, v in self.visual.parameter_layers().items()}
        out.update({f"keyvalue.{n}": v for n, v in self.keyvalue.parameter_layers().items()})
        return out

    def extra_repr(self) -> str:
        return (f"kind='e2vpt', num_tokens={self.num_tokens}, num_kv={self.num_prefix}, "
                f"pruned={0 if self.keep is None else int((self.keep == 0).all(1).sum())}")


@METHODS.register("e2vpt", E2VPTConfig, help="E2VPT: key-value prompts in every block beside VPT token prompts, "
                                             "with token- and segment-wise prompt pruning")
class E2VPT(MethodModule):
    merge_refusal = "its prompts are tokens and keys/values in the sequence, not weights"

    def attach(self) -> None:
        bb = self.backbone
        bb.require("tokens", "key_values", who="method 'e2vpt' (key-value prompts in every block)")
        D = bb.layout.embed_dim
        if D % self.config.segments:
            raise ConfigError(f"method 'e2vpt': segments={self.config.segments} does not divide the width {D} of "
                              f"{bb.config.name}; pick a divisor of {D}")

    def wrap_prompt(self, prompt: Optional[PromptModule], data_config: Any) -> PromptModule:
        kind = getattr(prompt, "kind", None)
        if kind not in TOKEN_KINDS:
            got = "no prompt (model.prompt is null)" if prompt is None else f"prompt kind {kind!r}"
            raise ConfigError(f"method 'e2vpt' adds key-value prompts and pruning to VPT token prompts, and this "
                              f"model has {got}; set model.prompt to {{kind: vpt_deep}} (or vpt_shallow)")
        bb, c = self.backbone, self.config
        if c.share_kv:
            keyvalue: PromptModule = SharedKeyValue(c, bb.layout.depth, bb.kv_dim(),
                                                    xavier_bound(bb.layout.patch_size, bb.kv_dim()))
        else:
            keyvalue = build_prompt({"kind": "vpt_prefix", "num_tokens": c.num_kv, "dropout": c.kv_dropout},
                                    bb.layout, data_config, kv_dim=bb.kv_dim())
        self.prompt = E2VPTPrompt(c, prompt, keyvalue, bb.layout.embed_dim)
        return self.prompt


def prune(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], token_share: Optional[float] = None,
          segment_share: Optional[float] = None) -> Dict[str, Any]:
    """E2VPT's pruning on a trained model: importance scores from the gradients of the cross-entropy over
    ``batches`` ((images, labels) pairs) with respect to masks on the visual prompt tokens and segments (the
    mean over batches of their magnitudes), then
    the lowest-scored ``token_share`` of tokens and ``segment_share`` of each kept token's segments (the
    config's ``token_prune`` / ``segment_prune`` when None) are masked, in place and in the method's config
    (so ``save_pretrained`` keeps them). Tokens or segments pruned before stay pruned; one token and one
    segment per token are always kept. Returns the scores and the masked indices."""
    method = getattr(model, "method", None)
    if not isinstance(method, E2VPT):
        raise ConfigError(f"prune() needs a model with method 'e2vpt', this one has "
                          f"{getattr(method, 'kind', None) or 'none'}")
    prompt: E2VPTPrompt = method.prompt
    c = method.config
    token_share = c.token_prune if token_share is None else float(token_share)
    segment_share = c.segment_prune if segment_share is None else float(segment_share)
    P, S = prompt.num_tokens, int(c.segments)
    token_gate = torch.ones(P, requires_grad=True)
    segment_gate = torch.ones(P, S, requires_grad=True)
    token_score, segment_score = torch.zeros(P), torch.zeros(P, S)
    was_training, n = model.training, 0
    model.eval()  # as the reference: no dropout while scoring
    prompt.gates = (token_gate, segment_gate)
    try:
        with torch.enable_grad():
            for x, y in batches:
                loss = F.cross_entropy(model(x), y)
                gt, gs = torch.autograd.grad(loss, (token_gate, segment_gate))
                token_score += gt.abs()
                segment_score += gs.abs()
                n += 1
    finally:
        prompt.gates = None
        model.train(was_training)
    if n == 0:
        raise ConfigError("prune() got no batches; pass (images, labels) batches of the training data")
    token_score, segment_score = token_score / n, segment_score / n
    pruned_t = set(c.pruned_tokens or ())
    for j in sorted((j for j in range(P) if j not in pruned_t), key=lambda j: float(token_score[j])):
        if len(pruned_t) >= min(int(P * token_share), P - 1):
            break
        pruned_t.add(j)
    pruned_s = set(c.pruned_segments or ())
    for j in range(P):
        if j in pruned_t:
            continue
        mine = {s for s in range(S) if j * S + s in pruned_s}
        for s in sorted((s for s in range(S) if s not in mine), key=lambda s: float(segment_score[j, s])):
            if len(mine) >= min(int(S * segment_share), S - 1):
                break
            mine.add(s)
            pruned_s.add(j * S + s)
    c.pruned_tokens = sorted(pruned_t) or None
    c.pruned_segments = sorted(pruned_s) or None
    prompt.set_masks(c.pruned_tokens, c.pruned_segments)
    return {"token_scores": token_score, "segment_scores": segment_score,
            "pruned_tokens": c.pruned_tokens or [], "pruned_segments": c.pruned_segments or []}
