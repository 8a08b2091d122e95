"""Packed trials: K sweep settings trained at once, sharing the frozen backbone's work.

Trials that differ only in how they are optimised (``optim.*``, ``sched.*``, ``train.label_smoothing``)
see the same images in the same order, so the frozen backbone's work before the first prompted block
is the same for all of them. :class:`PackedClassifier` runs it once per batch and then continues as K
copies, one per trial, through the multitask machinery (:class:`vpt.multitask.PromptMix` in its
``block`` mode: each trial's own prompt on its own copy of the batch). Head-only trials (linear probe)
share the whole backbone: only the K heads run per trial.

Each trial keeps its own prompt, head, optimizer state, learning rate, weight decay and schedule (one
optimizer whose parameter groups belong to one trial each). Packing is exact: with prompt dropout 0 the
K trials end with the weights K separate runs with the same seed reach (``tests/test_sweep_packed.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..model import PromptedModel
from ..multitask import PromptMix

# dotted config fields a packed trial may set on its own; every other field must be equal in a pack
PACKABLE_PREFIXES = ("optim.", "sched.")
PACKABLE_FIELDS = ("train.label_smoothing",)
SHARED_OPTIM_FIELDS = ("optim.opt",)  # one optimizer class for the whole pack


def is_packable(field: str) -> bool:
    """Whether trials that differ in ``field`` can be trained in one pack."""
    if field in SHARED_OPTIM_FIELDS:
        return False
    return field.startswith(PACKABLE_PREFIXES) or field in PACKABLE_FIELDS


def check_packable(fields: Sequence[str]) -> None:
    """ConfigError naming the fields that change what the backbone sees (so the trials cannot share it)."""
    bad = sorted(f for f in fields if not is_packable(f))
    if bad:
        raise ConfigError(f"--pack needs trials that differ only in optim.* / sched.* / train.label_smoothing "
                          f"(optim.opt excluded); the space also sets {', '.join(bad)}: drop --pack, or move "
                          f"those fields out of the space")


class PackedClassifier(nn.Module):
    """K :class:`vpt.model.PromptedModel` trials on ONE frozen backbone: ``forward(x)`` -> (K, B, C) logits."""

    def __init__(self, trials: Sequence[PromptedModel]):
        super().__init__()
        if not trials:
            raise ValueError("PackedClassifier needs at least one trial")
        first = trials[0]
        for j, m in enumerate(trials):
            if not isinstance(m, PromptedModel):
                raise ConfigError(f"packed trials must be classifiers (vpt.create_model); trial {j} is "
                                  f"{type(m).__name__}: drop --pack for this model type")
            if m.backbone is not first.backbone:
                raise ValueError(f"trial {j} has its own backbone; packed trials share one")
            if m.train_backbone:
                raise ConfigError("full fine-tuning trains the backbone, so trials cannot share it: drop --pack")
            if m.prompt_config != first.prompt_config or m.head_config != first.head_config:
                raise ValueError(f"trial {j} has another prompt or head than trial 0; packed trials differ only "
                                 f"in their optimisation settings")
        self.backbone = first.backbone
        self.trials = nn.ModuleList(trials)
        self.data_config = first.data_config

    def __len__(self) -> int:
        return len(self.trials)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.trials:
            m.train(mode)  # keeps the frozen backbone in eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> (K*B, ...) backbone features, trial-major (rows k*B .. k*B+B-1: trial k);
        (B, ...) features that every trial shares when the trials have no prompt (head-only)."""
        first, K, B = self.trials[0], len(self.trials), x.shape[0]
        bb = self.backbone
        if first.prompt is None:  # head-only trials: the whole backbone is shared
            return first.head_features(x)  # (B, ...): one pass serves every trial
        index = torch.arange(K, device=x.device).repeat_interleave(B)  # (K*B,)
        mix = PromptMix([m.prompt for m in self.trials], index, bb.layout.num_prefix if bb.layout else 0, block=B)
        nq = bb.layout.num_prefix if bb.supports_tokens and first.fast and first.reads_prefix_only() else None
        return first.forward_features_sets(x, mix, K, last_queries=nq)  # (K*B, ...): trial k's rows k*B ..

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        feats = self.features(x)
        if feats.shape[0] == B:  # shared by every trial
            return torch.stack([m.forward_head(feats) for m in self.trials])  # (K, B, C)
        return torch.stack([m.forward_head(feats[k * B:(k + 1) * B]) for k, m in enumerate(self.trials)])  # (K, B, C)

    def param_roles(self) -> Dict[str, Tuple[str, ...]]:
        """Each trial's roles (``vpt.model.AdapterMixin.param_roles``) under this module's names."""
        return {f"trials.{k}.{n}": r for k, m in enumerate(self.trials) for n, r in m.param_roles().items()}

    # what the training loop asks besides the logits (vpt.model.AdapterMixin), per trial
    def auxiliary_losses(self) -> List[Optional[torch.Tensor]]:
        return [m.auxiliary_loss() for m in self.trials]

    def end_epoch(self, epoch: int, epochs: int) -> None:
        for m in self.trials:
            m.end_epoch(epoch, epochs)

    def run_state(self) -> Dict[str, torch.Tensor]:
        return {f"{k}.{n}": t for k, m in enumerate(self.trials) for n, t in m.run_state().items()}

    def load_run_state(self, state: Dict[str, torch.Tensor]) -> None:
        for k, m in enumerate(self.trials):
            m.load_run_state({n.split(".", 1)[1]: t for n, t in state.items() if n.split(".", 1)[0] == str(k)})

    def set_lean(self, mode) -> "PackedClassifier":
        for m in self.trials:
            m.set_lean(mode)
        return self

    def save_pretrained(self, save_directory: str) -> None:
        """Each trial as its own artifact in ``<dir>/trial_<k>`` (several tasks = several subfolders)."""
        import os
        for k, m in enumerate(self.trials):
            if not all(bool(torch.isfinite(t).all()) for t in m.trainable_state_dict().values() if t.is_floating_point()):
                continue  # a diverged trial (the task reports it) gets no artifact, never a non-finite one
            m.save_pretrained(os.path.join(save_directory, f"trial_{k}"))

    def trial_tensors(self, k: int) -> Dict[str, torch.Tensor]:
        """Trial ``k``'s trainable tensors under the names a lone run's model gives them."""
        return self.trials[k].trainable_state_dict()


def build_packed_model(section: Any, class_names: List[str], num_trials: int) -> PackedClassifier:
    """``num_trials`` classifiers from the run config's ``model`` section on one backbone, each initialised
    exactly as ``vpt.tasks.classification.build_model`` initialises a lone run after the same seeding: the RNG state
    after the backbone is built is replayed for every trial's prompt and head."""
    from ..backbones import create_backbone
    if section.type != "classifier":
        raise ConfigError(f"--pack trains classifiers; model.type {section.type!r} is not packable: drop --pack")
    if getattr(section, "method", None) is not None:
        raise ConfigError(f"--pack shares one frozen backbone between trials, and model.method "
                          f"{section.method.kind!r} changes the backbone itself: drop --pack")
    backbone_cfg = section.backbone
    if dataclasses.is_dataclass(backbone_cfg):
        backbone_cfg = dataclasses.replace(backbone_cfg)
    backbone = create_backbone(backbone_cfg)
    after_backbone = torch.get_rng_state()
    trials = []
    for _ in range(num_trials):
        torch.set_rng_state(after_backbone)
        trials.append(PromptedModel(backbone, prompt=section.prompt, num_classes=len(class_names), head=section.head,
                                    class_names=list(class_names), train_backbone=section.train_backbone))
    return PackedClassifier(trials)


def build_packed_optimizer(model: PackedClassifier, optims: Sequence[Any], scheds: Sequence[Any], batch_size: int,
                           steps_per_epoch: int, epochs: int) -> Tuple[torch.optim.Optimizer, Any, List[float]]:
    """ONE optimizer whose parameter groups each belong to one trial (its lr, weight decay, momentum / betas),
    and one per-step schedule with a factor per group; equal, group for group, to each trial's own
    ``vpt.engine.optim.build_optimizer_and_scheduler``. Returns (optimizer, scheduler, each trial's lr)."""
    from ..engine.optim import lr_factor, param_groups, resolve_lr
    kinds = {o.opt.lower() for o in optims}
    if len(kinds) != 1:
        raise ConfigError(f"packed trials share one optimizer class; got {sorted(kinds)}: drop --pack")
    kind = kinds.pop()
    if kind not in ("sgd", "adamw"):
        raise ConfigError(f"unknown optimizer {kind!r}; available: adamw, sgd")
    groups, factors, lrs = [], [], []
    total = steps_per_epoch * epochs
    for m, o, s in zip(model.trials, optims, scheds):
        if s.warmup_type not in ("linear", "constant"):
            raise ConfigError(f"unknown sched.warmup_type '{s.warmup_type}'; available: constant, linear")
        lr = resolve_lr(o, batch_size)
        lrs.append(lr)
        warmup = int(round(s.warmup_epochs * steps_per_epoch))
        ratios = (s.warmup_lr / lr if lr > 0 else 0.0, s.min_lr / lr if lr > 0 else 0.0)
        for g in param_groups(m, o.weight_decay, o.no_decay_prompts, o.head_lr):
            g.setdefault("lr", lr)
            if kind == "sgd":
                g["momentum"] = o.momentum
            else:
                g["betas"] = tuple(o.betas)
            groups.append(g)
            factors.append(_factor(total, warmup, s.sched, ratios, s.warmup_type, lr_factor))
    opt = torch.optim.SGD(groups, lr=lrs[0]) if kind == "sgd" else torch.optim.AdamW(groups, lr=lrs[0])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factors), lrs


def _factor(total, warmup, sched, ratios, warmup_type, lr_factor):
    def f(step: int) -> float:
        return lr_factor(step, total, warmup, sched, ratios[0], ratios[1], warmup_type)
    return f


def packed_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: Sequence[float],
                active: Optional[Sequence[bool]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of every (active) trial, and each trial's correct count (K,).

    Trials share no tensor, so the gradient of the sum reaches each trial's tensors exactly as its own
    summed loss would; a pruned trial (``active[k]`` False) adds nothing and its tensors stop changing."""
    K = logits.shape[0]
    losses = []
    for k in range(K):
        if active is None or active[k]:
            losses.append(F.cross_entropy(logits[k].float(), y, reduction="sum", label_smoothing=label_smoothing[k]))
    correct = (logits.argmax(-1) == y[None]).sum(-1)  # (K,)
    loss = torch.stack(losses).sum() if losses else logits.sum() * 0.0
    return loss, correct


def clip_per_trial(model: PackedClassifier, clips: Sequence[Optional[float]]) -> None:
    """Each trial's own gradient-norm clipping (a lone run clips its own tensors' norm)."""
    for m, c in zip(model.trials, clips):
        if c:
            torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], c)
