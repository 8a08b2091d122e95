"""Typed run configuration: one dataclass per section of a recipe YAML (``configs/*.yaml``).

Precedence (CLI): recipe file <- command-line flags <- ``--set section.field=value``. Every field has a
comment; unknown keys are refused with the closest valid name (``vpt.config.from_dict``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..backbones.base import BackboneConfig

AMP_DTYPES = {"float32": "float32", "fp32": "float32", "none": "float32",
              "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


@dataclass
class ModelSection:
    type: str = "classifier"  # key into vpt.registry.MODEL_TYPES (classifier | clip | ...)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # frozen encoder (library:arch[.tag])
    prompt: Optional[Dict[str, Any]] = None  # {'kind': 'vpt_deep', 'num_tokens': 10, ...}; None: linear probe / full FT
    head: Dict[str, Any] = field(default_factory=lambda: {"kind": "linear"})  # head config (kind, pool, ...)
    train_backbone: bool = False  # unfreeze the backbone (full fine-tuning baseline)
    text: Optional[Dict[str, Any]] = None  # CLIP learnable text context (type 'clip' only)
    lora: Optional[Dict[str, Any]] = None  # type 'lora' only: {r, alpha, dropout, target_modules} (needs peft)


@dataclass
class DataSection:
    root: Optional[str] = None  # image folder (root/<class>/* or root/{train,val,test}/<class>/*) or a CSV file
    val_fraction: float = 0.1  # without a val split: this share of train, stratified per class
    test_fraction: float = 0.0  # without a test split: this share of the pool held out for the final test
    split_seed: int = 0  # seed of the stratified split and of the few-shot subset (independent of train.seed)
    shots: Optional[int] = None  # few-shot: keep k training images per class (after the val split)
    skip_corrupt: bool = True  # False: a corrupt / unreadable image stops the run instead of being skipped
    extensions: List[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif",
                                                           ".tif", ".tiff"])  # files that count as images


@dataclass
class AugmentSection:
    scale: Tuple[float, float] = (0.08, 1.0)  # random resized crop area range (timm --scale)
    ratio: Tuple[float, float] = (0.75, 4.0 / 3.0)  # random resized crop aspect range (timm --ratio)
    hflip: float = 0.5  # horizontal flip probability (timm --hflip)
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 disables (timm --color-jitter)
    color_jitter_prob: float = 0.8  # probability of applying colour jitter when enabled
    enabled: bool = True  # False: train with the evaluation transform (no augmentation)


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
    head_lr: Optional[float] = None  # absolute lr for head tensors (head.*); None: the same lr (VPT)


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
    lean: float = 0.0  # share of blocks whose MLP activations are recomputed in backward (0: off, 1: all): less memory, a little slower
    channels_last: bool = False  # NHWC weights and inputs (timm --channels-last): faster convolutions (CNN backbones)
    seed: int = 0  # seed of init, sampling order, augmentation (per sample) and dropout
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    device: Optional[str] = None  # cpu | cuda | cuda:N; None: cuda if available (cuda:LOCAL_RANK under torchrun)
    workers: int = 2  # DataLoader worker processes per rank (0: load in the main process)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (timm --smoothing)
    log_interval: int = 50  # log the running loss every N optimizer steps
    progress: Optional[bool] = None  # progress bars; None: only on a TTY and on rank 0
    eval_every: int = 1  # evaluate on val every N epochs (always after the last)


@dataclass
class OutputSection:
    dir: str = "runs/exp"  # run folder: config.yaml, train.log, metrics.csv, results.json, best/, last/
    tensorboard: bool = False  # also write TensorBoard scalars to <dir>/tb (needs `pip install tensorboard`)
    save_last: bool = True  # keep the last epoch's artifact in <dir>/last besides <dir>/best


@dataclass
class RunConfig:
    task: str = "classification"  # classification | detection (detection runs vpt.detection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimSection = field(default_factory=OptimSection)
    sched: SchedSection = field(default_factory=SchedSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputSection = field(default_factory=OutputSection)


def amp_dtype_name(name: str) -> str:
    """Normalise bf16 / fp16 / fp32 spellings; ConfigError names the allowed values."""
    from ..config import ConfigError
    from ..registry import did_you_mean
    key = str(name).lower()
    if key not in AMP_DTYPES:
        raise ConfigError(f"unknown train.amp_dtype {name!r}; available: float32, bfloat16, float16"
                          f"{did_you_mean(key, AMP_DTYPES)}")
    return AMP_DTYPES[key]


def validate(cfg: RunConfig) -> RunConfig:
    """Range checks that a type alone can't express; each message names the field and the fix."""
    from ..config import ConfigError
    t, o = cfg.train, cfg.optim
    t.amp_dtype = amp_dtype_name(t.amp_dtype)
    checks = [
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (t.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}"),
        (t.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}"),
        (t.workers >= 0, f"train.workers must be >= 0, got {t.workers}"),
        (o.opt.lower() in ("sgd", "adamw"), f"unknown optim.opt {o.opt!r}; available: adamw, sgd"),
        (o.lr is None or o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
        (o.head_lr is None or o.head_lr > 0, f"optim.head_lr must be > 0, got {o.head_lr}"),
        (o.lr_base > 0, f"optim.lr_base must be > 0, got {o.lr_base}"),
        (cfg.sched.sched in ("cosine", "constant"), f"unknown sched.sched {cfg.sched.sched!r}; available: constant, cosine"),
        (0 <= cfg.data.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}"),
        (0 <= cfg.data.test_fraction < 1, f"data.test_fraction must be in [0, 1), got {cfg.data.test_fraction}"),
        (cfg.data.shots is None or cfg.data.shots >= 1, f"data.shots must be >= 1, got {cfg.data.shots}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    return cfg
