"""Optimizers and schedules as in VPT: SGD / AdamW over the trainable tensors, lr scaled with the
batch size (lr = lr_base * batch / 256), linear warmup then cosine, per optimizer step."""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from torch import nn

from ..errors import ConfigError

_logger = logging.getLogger(__name__)


def resolve_lr(optim_cfg: Any, batch_size: int) -> float:
    """The absolute lr: ``optim.lr`` if given, else VPT's ``lr_base * batch_size / lr_base_size``."""
    if optim_cfg.lr is not None:
        return float(optim_cfg.lr)
    return float(optim_cfg.lr_base) * batch_size / float(optim_cfg.lr_base_size)


NO_DECAY_ROLES = frozenset({"prompt", "norm", "bias", "token"})


def param_groups(model: nn.Module, weight_decay: float, no_decay_prompts: bool = True,
                 head_lr: Optional[float] = None) -> List[Dict[str, Any]]:
    """Trainable tensors split into decayed / undecayed groups, and head / rest when ``head_lr`` is set
    (empty groups dropped). A group with its own lr carries ``lr`` (the schedule scales it too).

    Which tensor is what comes from the roles the model reports (``model.param_roles()``: prompt, head,
    norm, bias, backbone, token (a library's learned class / position tokens); see
    ``vpt.model.AdapterMixin``), never from parameter names: prompts, norms, biases, tokens and other 1-d
    tensors get no weight decay (as in timm and VPT); ``head_lr`` applies to 'head'.
    A model without ``param_roles`` is all backbone."""
    roles = model.param_roles() if hasattr(model, "param_roles") else {}
    groups: Dict[tuple, List[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        r = set(roles.get(name, ("backbone",)))
        decay = not (no_decay_prompts and (p.ndim <= 1 or bool(r & NO_DECAY_ROLES)))
        head = head_lr is not None and "head" in r
        groups.setdefault((head, decay), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters; set a prompt, a head or model.train_backbone")
    out = []
    for head in (False, True):
        for decay in (True, False):
            if (head, decay) in groups:
                g = {"params": groups[(head, decay)], "weight_decay": weight_decay if decay else 0.0}
                if head:
                    g["lr"] = head_lr
                out.append(g)
    return out


def build_optimizer(model: nn.Module, optim_cfg: Any, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, L2 decay) or AdamW (decoupled decay) over ``model``'s trainable tensors."""
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.no_decay_prompts,
                          getattr(optim_cfg, "head_lr", None))
    kind = optim_cfg.opt.lower()
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg.betas))
    raise ValueError(f"unknown optimizer {optim_cfg.opt!r}; available: adamw, sgd")


def lr_factor(step: int, total_steps: int, warmup_steps: int, sched: str = "cosine",
              warmup_ratio: float = 0.0, min_ratio: float = 0.0, warmup_type: str = "linear") -> float:
    """Multiplier of the peak lr at optimizer ``step`` (0-based): warmup (a linear ramp from warmup_lr, or
    constant at warmup_lr as CoOp does), then cosine or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        if warmup_type == "constant":
            return warmup_ratio
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    if sched == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Any, steps_per_epoch: int, epochs: int,
                    lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR; its state (the step count) goes into the run state for resume."""
    total = steps_per_epoch * epochs
    warmup = int(round(sched_cfg.warmup_epochs * steps_per_epoch))
    warmup_ratio = sched_cfg.warmup_lr / lr if lr > 0 else 0.0
    min_ratio = sched_cfg.min_lr / lr if lr > 0 else 0.0
    kind = sched_cfg.sched
    if sched_cfg.warmup_type not in ("linear", "constant"):
        raise ConfigError(f"unknown sched.warmup_type '{sched_cfg.warmup_type}'; available: constant, linear")

    def f(step: int) -> float:
        return lr_factor(step, total, warmup, kind, warmup_ratio, min_ratio, sched_cfg.warmup_type)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def build_optimizer_and_scheduler(model: nn.Module, optim_cfg: Any, sched_cfg: Any, batch_size: int,
                                  steps_per_epoch: int, epochs: int) -> Tuple[torch.optim.Optimizer, Any, float]:
    lr = resolve_lr(optim_cfg, batch_size)
    opt = build_optimizer(model, optim_cfg, lr)
    _logger.info("optimizer %s lr=%.6g (batch %d%s), weight_decay=%g, %d steps/epoch",
                 optim_cfg.opt, lr, batch_size,
                 "" if optim_cfg.lr is not None else f", lr_base={optim_cfg.lr_base:g}/{optim_cfg.lr_base_size}",
                 optim_cfg.weight_decay, steps_per_epoch)
    return opt, build_scheduler(opt, sched_cfg, steps_per_epoch, epochs, lr), lr
