"""The engine's config sections, shared by every task's run config: optimizer, schedule, the loop's own
settings and the run folder. A task's run config (``vpt.tasks.*``) is a dataclass with these sections
(``optim``, ``sched``, ``train``, ``output``) plus its own (model, data, ...); it may subclass a section
to change defaults or add fields.

Precedence (CLI): recipe file <- command-line flags <- ``--set section.field=value``. Every field has a
comment; unknown keys are refused with the closest valid name (``vpt.config.from_dict``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ..errors import ConfigError
from ..registry import did_you_mean

AMP_DTYPES = {"float32": "float32", "fp32": "float32", "none": "float32",
              "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


@dataclass
class OptimSection:
    opt: str = "sgd"  # sgd | adamw (timm --opt)
    lr: Optional[float] = None  # absolute learning rate; None: lr_base * batch_size / lr_base_size
    lr_base: float = 0.1  # VPT's base learning rate, scaled linearly with the global batch size
    lr_base_size: int = 256  # batch size at which lr == lr_base (VPT / timm use 256)
    momentum: float = 0.9  # SGD momentum
    betas: Tuple[float, float] = (0.9, 0.999)  # AdamW betas
    weight_decay: float = 0.0  # decoupled (AdamW) or L2 (SGD) weight decay
    no_decay_prompts: bool = True  # no weight decay on prompt tokens, biases and norm weights
    clip_grad: Optional[float] = None  # clip the gradient norm to this value; None: off
    head_lr: Optional[float] = None  # absolute lr for the tensors whose role is 'head'; None: the same lr (VPT)


@dataclass
class SchedSection:
    sched: str = "cosine"  # cosine | constant (after warmup)
    warmup_epochs: float = 0.0  # linear warmup from warmup_lr to lr over this many epochs
    warmup_lr: float = 0.0  # learning rate at step 0 of the warmup
    warmup_type: str = "linear"  # linear (ramp warmup_lr -> lr) | constant (stay at warmup_lr, as CoOp)
    min_lr: float = 0.0  # cosine floor


@dataclass
class TrainSection:
    epochs: int = 10  # training epochs
    batch_size: int = 64  # GLOBAL batch per optimizer step (all ranks x accumulation steps)
    eval_batch_size: int = 128  # evaluation batch (global; split over ranks)
    grad_accum_steps: int = 1  # micro-batches per optimizer step (per-rank micro-batch = batch/(ranks*accum))
    amp_dtype: str = "float32"  # float32 | bfloat16 | float16 (float16 uses a GradScaler)
    compile: bool = False  # torch.compile the training forward (timm --torchcompile); evaluation runs eager
    seed: int = 0  # seed of init, sampling order, augmentation (per sample) and dropout
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    device: Optional[str] = None  # cpu | cuda | cuda:N; None: cuda if available (cuda:LOCAL_RANK under torchrun)
    workers: int = 2  # DataLoader worker processes per rank (0: load in the main process)
    log_interval: int = 50  # log the running loss every N optimizer steps
    progress: Optional[bool] = None  # progress bars; None: only on a TTY and on rank 0
    eval_every: int = 1  # evaluate on val every N epochs (always after the last)
    init_from: Optional[str] = None  # start from an artifact's trainable tensors (a new run: new optimizer, schedule)


@dataclass
class OutputSection:
    dir: str = "runs/exp"  # run folder: config.yaml, train.log, metrics.csv, results.json, best/, last/
    tensorboard: bool = False  # also write TensorBoard scalars to <dir>/tb (needs `pip install tensorboard`)
    save_last: bool = True  # keep the last epoch's artifact in <dir>/last besides <dir>/best


def amp_dtype_name(name: str) -> str:
    """Normalise bf16 / fp16 / fp32 spellings; ConfigError names the allowed values."""
    key = str(name).lower()
    if key not in AMP_DTYPES:
        raise ConfigError(f"unknown train.amp_dtype {name!r}; available: float32, bfloat16, float16"
                          f"{did_you_mean(key, AMP_DTYPES)}")
    return AMP_DTYPES[key]


def validate_sections(cfg: Any) -> Any:
    """Range checks of the engine's sections (train, optim, sched) that a type alone can't express; each
    message names the field and the fix. Tasks check their own sections in ``Task.validate``."""
    t, o, s = cfg.train, cfg.optim, cfg.sched
    t.amp_dtype = amp_dtype_name(t.amp_dtype)
    checks = [
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (t.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}"),
        (t.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}"),
        (t.workers >= 0, f"train.workers must be >= 0, got {t.workers}"),
        (t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}"),
        (o.opt.lower() in ("sgd", "adamw"), f"unknown optim.opt {o.opt!r}; available: adamw, sgd"),
        (o.lr is None or o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
        (o.head_lr is None or o.head_lr > 0, f"optim.head_lr must be > 0, got {o.head_lr}"),
        (o.lr_base > 0, f"optim.lr_base must be > 0, got {o.lr_base}"),
        (o.lr_base_size >= 1, f"optim.lr_base_size must be >= 1, got {o.lr_base_size}"),
        (0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}"),
        (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas must be two numbers in [0, 1), "
                                                                 f"got {o.betas}"),
        (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
        (o.clip_grad is None or o.clip_grad > 0, f"optim.clip_grad must be > 0 (or null: off), got {o.clip_grad}"),
        (s.warmup_epochs >= 0, f"sched.warmup_epochs must be >= 0, got {s.warmup_epochs}"),
        (s.warmup_lr >= 0, f"sched.warmup_lr must be >= 0, got {s.warmup_lr}"),
        (s.min_lr >= 0, f"sched.min_lr must be >= 0, got {s.min_lr}"),
        (t.log_interval >= 0, f"train.log_interval must be >= 0 (0: off), got {t.log_interval}"),
        (s.sched in ("cosine", "constant"), f"unknown sched.sched {s.sched!r}; available: constant, cosine"),
        (s.warmup_type in ("linear", "constant"),
         f"unknown sched.warmup_type '{s.warmup_type}'; available: constant, linear"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    return cfg
