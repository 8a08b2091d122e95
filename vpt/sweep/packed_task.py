"""Packed sweep trials as an engine task: K classification trials that differ only in optim.* / sched.* /
train.label_smoothing train in ONE engine run (one data pipeline, one backbone pass per batch, see
``vpt.sweep.packed``), each with its own parameter groups, val metric per epoch and pruning.

A pruned trial (``active[k]`` False) stops changing: its loss leaves the sum. A trial whose loss turns
non-finite is stopped the same way and reported as diverged (``diverged[k]``) while the others go on:
the check stays on the device during the epoch and is read once at its end.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..engine.task import StepOutput
from ..errors import ConfigError
from ..metrics import classification_metrics
from ..tasks.classification import ClassificationTask, predict_logits
from .packed import build_packed_model, build_packed_optimizer

_logger = logging.getLogger(__name__)


class _Flat(torch.nn.Module):
    """(K, B, C) packed logits as (B, K*C) rows, so the engine's sharded prediction gathers them per sample."""

    def __init__(self, packed):
        super().__init__()
        self.packed = packed

    def forward(self, x):
        out = self.packed(x)  # (K, B, C)
        return out.permute(1, 0, 2).reshape(out.shape[1], -1)  # (B, K*C)


class PackedClassificationTask(ClassificationTask):
    """``cfg``: the shared run config; ``trial_cfgs``: each trial's run config (equal but for packable fields)."""

    name = "classification"
    handles_divergence = True  # a diverged trial is stopped and reported alone; the others go on

    def __init__(self, cfg: Any, trial_cfgs: Sequence[Any]):
        super().__init__(cfg)
        if cfg.optim.clip_grad or any(c.optim.clip_grad for c in trial_cfgs):
            raise ConfigError("packed trials clip no gradients (each trial would need its own norm): leave "
                              "optim.clip_grad unset, or drop --pack")
        if cfg.train.grad_accum_steps != 1 or cfg.train.amp_dtype == "float16":
            raise ConfigError("packed trials need train.grad_accum_steps 1 and no float16 GradScaler (one scale for "
                              "all trials); use bfloat16 / float32, or drop --pack")
        self.trial_cfgs = list(trial_cfgs)
        K = len(self.trial_cfgs)
        self.active = [True] * K
        self.diverged = [False] * K
        self._bad: Optional[torch.Tensor] = None  # (K,) bool on the device: a non-finite loss this epoch

    def state_dict(self, run) -> Dict[str, Any]:
        """Which trials still train (pruned / diverged ones stopped for good): a resumed pack keeps them stopped."""
        return {**super().state_dict(run), "active": list(self.active), "diverged": list(self.diverged)}

    def load_state_dict(self, run, state: Dict[str, Any]) -> None:
        super().load_state_dict(run, state)
        K = len(self.trial_cfgs)
        if len(state.get("active") or []) == K:
            self.active = [bool(a) for a in state["active"]]
            self.diverged = [bool(d) for d in state.get("diverged") or [False] * K]

    def has_split(self, split: str) -> bool:
        return split != "test" and super().has_split(split)  # search trials select on val and never read test

    def create_model(self) -> torch.nn.Module:
        return build_packed_model(self.cfg.model, self.splits.class_names, len(self.trial_cfgs))

    def build_optimizer(self, run):
        opt, sch, lrs = build_packed_optimizer(run.model, [c.optim for c in self.trial_cfgs],
                                               [c.sched for c in self.trial_cfgs], self.cfg.train.batch_size,
                                               run.steps_per_epoch, self.cfg.train.epochs)
        return opt, sch, lrs[0]

    def train_step(self, run, net, batch) -> StepOutput:
        x, y, _, n_skip = batch
        totals = {"skipped": torch.tensor(float(n_skip), device=run.device)}
        if x is None:
            dummy = torch.zeros((1, *self.input_size), device=run.device)
            return StepOutput(net(dummy).float().sum() * 0.0, 0, totals=totals)
        x = x.to(run.device, non_blocking=True, memory_format=self.memory_format)
        y = y.to(run.device, non_blocking=True)
        logits = net(x)  # (K, B, C)
        K = logits.shape[0]
        if self._bad is None or self._bad.device != logits.device:
            self._bad = torch.zeros(K, dtype=torch.bool, device=logits.device)
        # a pruned / diverged trial leaves the graph: its tensors get no gradient, so no step moves them
        live = [k for k in range(K) if self.active[k]]
        if not live:
            return StepOutput(logits.float().sum() * 0.0, len(y), totals=totals)
        aux = run.model.auxiliary_losses()  # each trial's extra terms (a batch mean), as a lone run adds them
        losses = torch.stack([F.cross_entropy(logits[k].float(), y, reduction="sum",
                                              label_smoothing=self.trial_cfgs[k].train.label_smoothing)
                              + (aux[k].float() * len(y) if aux[k] is not None else 0.0)
                              for k in live])  # (K_live,)
        finite = torch.isfinite(losses)
        self._bad[live] |= ~finite  # read at the epoch's end: no host sync per step
        loss = torch.where(finite, losses, torch.zeros_like(losses)).sum()  # one bad trial can't poison the sum
        correct = (logits.argmax(-1) == y[None]).sum(-1)  # (K,)
        n_live = max(sum(self.active), 1)
        top1 = 100.0 * (correct * torch.tensor(self.active, device=logits.device)).sum().double() / n_live
        return StepOutput(loss, len(y), sums={"top1": top1}, totals=totals)

    def train_epoch_end(self, run, epoch: int, row: Dict[str, Any]) -> None:
        super().train_epoch_end(run, epoch, row)
        if self._bad is not None:
            for k, bad in enumerate(self._bad.tolist()):
                if bad and self.active[k]:
                    self.active[k], self.diverged[k] = False, True
                    _logger.warning("packed trial %d: non-finite training loss in epoch %d; it stops here", k, epoch)

    def evaluate(self, run, model, split: str) -> Dict[str, Any]:
        t, names = self.cfg.train, self.splits.class_names
        out = predict_logits(_Flat(model), self.datasets[split], t.eval_batch_size, run.device, t.amp_dtype,
                             run.info, t.workers, t.progress, split, t.channels_last)
        targets = torch.tensor([self.datasets[split].samples[i][1] for i in out["indices"].tolist()], dtype=torch.long)
        C, per = len(names), []
        for k in range(len(self.trial_cfgs)):
            logits = out["logits"][:, k * C:(k + 1) * C]
            m = classification_metrics(logits, targets, names)
            m["loss"] = F.cross_entropy(logits, targets).item() if len(targets) else float("nan")
            per.append(m)
        live = [m["top1"] for m, a in zip(per, self.active) if a] or [float("nan")]
        return {"top1": max(live), "per_trial": per, "loss": per[0]["loss"]}

    def epoch_columns(self, val: Dict[str, Any]) -> Dict[str, float]:
        cols = {"val_top1": val["top1"]}
        cols.update({f"val_top1_t{k}": m["top1"] for k, m in enumerate(val["per_trial"])})
        return cols

    def brief(self, metrics):
        if metrics is None:
            return None
        return {"top1": metrics["top1"], "per_trial_top1": [m["top1"] for m in metrics.get("per_trial", [])]}

    def finish(self, run, results: Dict[str, Any]) -> None:
        pass  # no confusion matrix for a pack: each trial's curve goes to the study

    def summary(self, results: Dict[str, Any]) -> List[str]:
        return [f"packed trials: best val top-1 per trial {results['val'] and results['val'].get('per_trial_top1')}"]
