"""Many tasks, one frozen backbone, one batch.

``MultiTaskModel`` holds N artifacts made for the same backbone and runs a batch in which each sample
names its task (peft's ``adapter_names=`` semantics; ``"base"`` runs the plain backbone). Per-sample
prompts are gathered from the tasks' prompt modules into one ``PromptMix``; prompts of different
lengths are padded and the padding masked out of attention, so a mixed batch needs ONE backbone
pass per prompt schedule (tasks whose prompts sit at the same blocks share a pass).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .artifact import Artifact
from .errors import ArtifactError
from .model import PromptedModel
from .prompts.base import PromptModule
from .schema import DEFAULT_MAX_PARAMS

BASE = "base"  # the task name for "no prompt, no head": the backbone's own pooled features


def _schedule(prompt: Optional[PromptModule]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(token layers, key/value layers) of a task's prompt: tasks with equal schedules share a pass."""
    if prompt is None:
        return (), ()
    layers = tuple(getattr(prompt, "layers", ()))
    return (layers if prompt.uses_tokens else ()), (layers if prompt.uses_kv else ())


class PromptMix(PromptModule):
    """The prompts of several tasks, chosen per sample by ``index`` (B,) into ``prompts``.

    ``block=n`` says that the samples come in task order, n per task (``index`` is
    ``arange(T).repeat_interleave(n)``, as for packed sweep trials): each task's prompt is then
    broadcast to its n rows instead of gathered row by row, so a packed trial computes (and its
    gradient sums) exactly as the task alone would."""

    def __init__(self, prompts: Sequence[Optional[PromptModule]], index: torch.Tensor, num_prefix: int,
                 block: Optional[int] = None):
        super().__init__(None)
        self.tasks, self.index, self.k, self.block = list(prompts), index, num_prefix, block
        self._runs: Dict[int, Optional[int]] = {}  # block i -> samples per run of shared tokens (block mode)
        self._tables: Dict[int, torch.Tensor] = {}  # block i -> the tasks' tokens (T, P, D) (per-sample mode)
        if block is not None and index.shape[0] != block * len(self.tasks):
            raise ValueError(f"block={block} needs {block * len(self.tasks)} samples, got {index.shape[0]}")
        self.uses_pixels = any(p is not None and p.uses_pixels for p in self.tasks)
        self.uses_tokens = any(p is not None and p.uses_tokens for p in self.tasks)
        self.uses_kv = any(p is not None and p.uses_kv for p in self.tasks)
        tok, kv = set(), set()
        for p in self.tasks:
            t, v = _schedule(p)
            tok.add(t) if t else None
            kv.add(v) if v else None
        if len(tok) > 1 or len(kv) > 1:
            raise ValueError("tasks in one PromptMix must share their prompt schedules; group them first")
        self.token_layers = set(next(iter(tok))) if tok else set()
        self.kv_layers = set(next(iter(kv))) if kv else set()
        per_task_p = torch.tensor([p.num_tokens if p is not None and p.uses_tokens else 0 for p in self.tasks])
        per_task_kv = torch.tensor([p.num_prefix if p is not None and p.uses_kv else 0 for p in self.tasks])
        self.P, self.Pkv = int(per_task_p.max()), int(per_task_kv.max())
        # known on the host: when every task has as many slots as the longest, no key needs masking
        self.tok_full, self.kv_full = bool((per_task_p == self.P).all()), bool((per_task_kv == self.Pkv).all())
        dev = index.device
        # valid[b, j]: prompt slot j exists for sample b's task
        self.tok_valid = (torch.arange(self.P, device=dev)[None] < per_task_p.to(dev)[index][:, None])  # (B, P)
        self.kv_valid = (torch.arange(self.Pkv, device=dev)[None] < per_task_kv.to(dev)[index][:, None])  # (B, Pkv)

    @property
    def first_layer(self) -> int:
        if self.uses_pixels:
            return -1
        return min(self.token_layers | self.kv_layers, default=1 << 30)

    @staticmethod
    def _padded(rows: List[Optional[torch.Tensor]], length: int) -> List[torch.Tensor]:
        like = next(r for r in rows if r is not None)
        return [F.pad(r, (0, 0, 0, length - r.shape[0])) if r is not None else like.new_zeros(length, like.shape[1])
                for r in rows]  # T x (L, D)

    def _gather(self, rows: List[Optional[torch.Tensor]], length: int) -> torch.Tensor:
        padded = self._padded(rows, length)
        if self.block is not None:
            return torch.cat([r.expand(self.block, -1, -1) for r in padded])  # T x (n, L, D) -> (B, L, D)
        return torch.stack(padded).index_select(0, self.index)  # (T, L, D) -> (B, L, D)

    def pixels(self, x):
        deltas = [p.delta(x.shape[-2:]) if p is not None and p.uses_pixels else None for p in self.tasks]
        like = next(d for d in deltas if d is not None)
        deltas = [d if d is not None else torch.zeros_like(like) for d in deltas]  # T x (1, C, H, W)
        if self.block is not None:
            return x + torch.cat([d.expand(self.block, -1, -1, -1) for d in deltas]).to(x.dtype)  # (B, C, H, W)
        return x + torch.cat(deltas)[self.index].to(x.dtype)  # (T, C, H, W) -> (B, C, H, W)

    def has_tokens(self, i):
        return self.P > 0 and i in self.token_layers

    def token_runs(self, i):
        return self._runs.get(i)

    def tokens(self, i, batch_size):
        if i not in self.token_layers:
            return None
        if self.block is not None:  # each task's own (n, P_t, D) tokens, as it makes them alone (dropout too)
            rows = [p.tokens(i, self.block) if p is not None and p.uses_tokens else None for p in self.tasks]
            like = next(r for r in rows if r is not None)
            # broadcast tokens (no dropout drawn per sample) are shared by their whole block
            self._runs[i] = self.block if all(r is None or r.stride(0) == 0 for r in rows) else None
            return torch.cat([F.pad(r, (0, 0, 0, self.P - r.shape[1])) if r is not None
                              else like.new_zeros(self.block, self.P, like.shape[2]) for r in rows])  # (B, P, D)
        rows = [p.tokens(i, 1)[0] if p is not None and p.uses_tokens else None for p in self.tasks]  # (P_t, D)
        self._tables[i] = table = torch.stack(self._padded(rows, self.P))  # (T, P, D)
        return table.index_select(0, self.index)  # (B, P, D)

    def token_table(self, i):
        table = self._tables.get(i)
        return None if table is None else (table, self.index)

    def kv(self, i, batch_size):
        if i not in self.kv_layers:
            return None
        pairs = [p.kv(i, 1) if p is not None and p.uses_kv else None for p in self.tasks]
        keys = self._gather([kv[0][0] if kv else None for kv in pairs], self.Pkv)  # (B, Pkv, A)
        vals = self._gather([kv[1][0] if kv else None for kv in pairs], self.Pkv)
        return keys, vals

    def key_mask(self, i, num_prompts, seq_len):
        if (not num_prompts or self.tok_full) and (i not in self.kv_layers or self.kv_full):
            return None  # decided on the host: no device sync per block
        B = self.index.shape[0]
        seq = torch.ones(B, seq_len, dtype=torch.bool, device=self.index.device)
        if num_prompts:
            seq[:, self.k:self.k + num_prompts] = self.tok_valid
        return torch.cat([self.kv_valid, seq], dim=1) if i in self.kv_layers else seq  # (B, Pkv + L)


class MultiTaskModel(nn.Module):
    """Several prompted tasks on one shared frozen backbone; see the module docstring."""

    def __init__(self, tasks: Mapping[str, PromptedModel]):
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskModel needs at least one task")
        if BASE in tasks:
            raise ValueError(f"'{BASE}' is reserved for the plain backbone; rename that task")
        models = list(tasks.values())
        self.backbone = models[0].backbone
        for name, m in tasks.items():
            if m.backbone is not self.backbone:
                raise ValueError(f"task '{name}' has its own backbone; load tasks with MultiTaskModel.from_pretrained "
                                 f"(or pass backbone=) so that they share one")
        self.tasks = nn.ModuleDict(dict(tasks))
        self.eval()

    @classmethod
    def from_pretrained(cls, artifacts: Union[Mapping[str, str], Sequence[str]], weights: Optional[str] = None,
                        device: Union[str, torch.device] = "cpu",
                        max_params: int = DEFAULT_MAX_PARAMS) -> "MultiTaskModel":
        """Load artifacts (``{name: dir}``, or dirs named by their folder) onto ONE backbone, each read and
        checked once (``vpt.Artifact``). ArtifactError, naming the task as ``NAME=DIR``, for an artifact that
        is not a classifier, was made for another backbone (the field that differs) or preprocesses images
        differently from the first; ``weights`` is the first artifact's backbone weights file (if moved),
        ``max_params`` bounds each model."""
        import os
        if not isinstance(artifacts, Mapping):
            artifacts = {os.path.basename(os.path.normpath(d)): d for d in artifacts}
        if not artifacts:
            raise ValueError("MultiTaskModel.from_pretrained needs at least one artifact")
        opened: Dict[str, Artifact] = {}
        for name, d in artifacts.items():
            try:
                opened[name] = art = Artifact.open(d)
                if not issubclass(art.model_class, PromptedModel):
                    raise ArtifactError(f"holds a {art.model_type} model; a MultiTaskModel combines classifiers "
                                        f"(vpt.PromptedModel): load it on its own (vpt predict ARTIFACT ...)")
            except ArtifactError as e:
                raise ArtifactError(f"{name}={d}: {e}") from None
        (first_name, first_dir), *rest = artifacts.items()
        try:
            first = opened[first_name].load(weights=weights, max_params=max_params)
        except ArtifactError as e:
            raise ArtifactError(f"{first_name}={first_dir}: {e}") from None
        tasks = {first_name: first}
        for name, d in rest:
            try:
                m = opened[name].load(backbone=first.backbone, max_params=max_params)
            except ArtifactError as e:
                hint = (f"; every task must be trained on the backbone of {first_name!r}"
                        if str(e).startswith("artifact was made for another backbone") else "")
                raise ArtifactError(f"{name}={d}: {e}{hint}") from None
            if m.data_config != first.data_config:
                raise ArtifactError(f"{name}={d} preprocesses images differently from {first_name!r} "
                                    f"({m.data_config} vs {first.data_config}): one batch can't serve both; "
                                    f"load (or predict) them separately")
            tasks[name] = m
        return cls(tasks).to(device)

    @property
    def task_names(self) -> List[str]:
        return list(self.tasks.keys())

    def _groups(self, names: Sequence[str]) -> List[List[str]]:
        """Tasks that can share one pass: equal prompt schedules (and masks the backbone can apply)."""
        can_mask = self.backbone.capabilities.per_sample_masks is None
        groups: Dict[object, List[str]] = {}
        for n in dict.fromkeys(names):
            prompt = self.tasks[n].prompt if n != BASE else None
            key = _schedule(prompt) if can_mask else n
            if can_mask and key == ((), ()) and groups:
                key = next(iter(groups))  # pixel-only and unprompted tasks ride along with any pass
            groups.setdefault(key, []).append(n)
        return list(groups.values())

    def forward(self, x: torch.Tensor, tasks: Sequence[Optional[str]]) -> List[torch.Tensor]:
        """Images (B, C, H, W) and one task name per sample (None or 'base': plain backbone) -> a list of
        B outputs: each sample's logits under its task's head (pooled features for 'base')."""
        names = [BASE if t is None else str(t) for t in tasks]
        if len(names) != x.shape[0]:
            raise ValueError(f"{len(names)} task names for a batch of {x.shape[0]}")
        unknown = sorted({n for n in names if n != BASE and n not in self.tasks})
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; loaded: {', '.join(self.task_names)} (or '{BASE}')")
        out: List[Optional[torch.Tensor]] = [None] * len(names)
        for group in self._groups(names):
            rows = [i for i, n in enumerate(names) if n in group]
            local = {n: j for j, n in enumerate(group)}
            index = torch.tensor([local[names[i]] for i in rows], device=x.device)
            prompts = [self.tasks[n].prompt if n != BASE else None for n in group]
            first_only = all(self.backbone.pool_reads_prefix_only() if n == BASE
                             else self.tasks[n].reads_prefix_only() for n in group)
            feats = self._features(x if len(rows) == len(names) else x[rows], prompts, index, first_only)
            for n in group:
                sel = [j for j, i in enumerate(rows) if names[i] == n]
                f = feats[sel]
                res = self.backbone.pool(f) if n == BASE else self.tasks[n].forward_head(f)
                for j, r in zip(sel, res):
                    out[rows[j]] = r
        return out  # type: ignore[return-value]

    def _features(self, x, prompts, index, first_only=False):
        any_model = next(iter(self.tasks.values()))
        mix = PromptMix(prompts, index, self.backbone.layout.num_prefix if self.backbone.layout else 0)
        if not self.backbone.supports_tokens:
            return self.backbone.forward_features(mix.pixels(x) if mix.uses_pixels else x)
        active = mix if (mix.uses_pixels or mix.uses_tokens or mix.uses_kv) else None
        h, _, _ = any_model._encode(x, prompt=active, grad_from=mix.first_layer,
                                    last_queries=self.backbone.layout.num_prefix if first_only and any_model.fast else None)
        return self.backbone.finish(h)
