"""The engine's config sections, shared by every task's run config: optimizer, schedule, the loop's own
settings and the run folder. A task's run config (``vpt.tasks.*``) is a dataclass with these sections
(``optim``, ``sched``, ``train``, ``output``) plus its own (model, data, ...); it may subclass a section
to change defaults or add fields.

Precedence (CLI): recipe file <- command-line flags <- ``--set section.field=value``. Every field has a
declaration with its help and bounds (``vpt.config.option``) and each section checks itself when it is made;
unknown keys are refused with the closest valid name (``vpt.config.from_dict``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ..config import Checked, FieldError, option
from ..errors import ConfigError
from ..registry import did_you_mean

OPTIMIZERS = ("adamw", "sgd")

AMP_DTYPES = {"float32": "float32", "fp32": "float32", "none": "float32",
              "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


@dataclass
class OptimSection(Checked):
    opt: str = option("sgd", "optimizer (timm --opt): sgd | adamw")
    lr: Optional[float] = option(None, "absolute learning rate (null: lr_base * batch_size / lr_base_size)",
                                 range=(0, None, "()"))
    lr_base: float = option(0.1, "VPT's base learning rate, scaled linearly with the global batch size",
                            range=(0, None, "()"))
    lr_base_size: int = option(256, "batch size at which lr == lr_base (VPT / timm use 256)", range=(1, None))
    momentum: float = option(0.9, "SGD momentum", range=(0.0, 1.0, "[)"))
    betas: Tuple[float, float] = option((0.9, 0.999), "AdamW betas", range=(0.0, 1.0, "[)"))
    weight_decay: float = option(0.0, "decoupled (AdamW) or L2 (SGD) weight decay", range=(0.0, None))
    no_decay_prompts: bool = option(True, "no weight decay on prompt tokens, biases and norm weights")
    clip_grad: Optional[float] = option(None, "clip the gradient norm to this value (null: off)",
                                        range=(0, None, "()"))
    head_lr: Optional[float] = option(None, "absolute lr for the tensors whose role is 'head' (null: the same lr, "
                                             "as VPT)", range=(0, None, "()"))

    def check(self) -> None:
        self.opt = str(self.opt).lower()
        if self.opt not in OPTIMIZERS:
            raise FieldError("opt", f" {self.opt!r}; available: {', '.join(OPTIMIZERS)}"
                                    f"{did_you_mean(self.opt, OPTIMIZERS)}", before="unknown ")
        if len(self.betas) != 2:
            raise FieldError("betas", f" must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass
class SchedSection(Checked):
    sched: str = option("cosine", "learning-rate schedule after warmup", choices=("cosine", "constant"))
    warmup_epochs: float = option(0.0, "linear warmup from warmup_lr to lr over this many epochs", range=(0.0, None))
    warmup_lr: float = option(0.0, "learning rate at step 0 of the warmup", range=(0.0, None))
    warmup_type: str = option("linear", "linear (ramp warmup_lr -> lr) | constant (stay at warmup_lr, as CoOp)",
                              choices=("linear", "constant"))
    min_lr: float = option(0.0, "cosine floor", range=(0.0, None))


@dataclass
class TrainSection(Checked):
    epochs: int = option(10, "training epochs", range=(1, None))
    batch_size: int = option(64, "GLOBAL batch per optimizer step (all ranks x accumulation steps)", range=(1, None))
    eval_batch_size: int = option(128, "evaluation batch (global; split over ranks)", range=(1, None))
    grad_accum_steps: int = option(1, "micro-batches per optimizer step (per-rank micro-batch = "
                                      "batch / (ranks * accum))", range=(1, None))
    amp_dtype: str = option("float32", "float32 | bfloat16 | float16 (float16 uses a GradScaler)")
    compile: bool = option(False, "torch.compile the training forward (timm --torchcompile), kept only if its step is "
                                  "faster than eager on the first batch (results.json: compile); evaluation runs eager")
    fp8: bool = option(False, "FP8 forward and input-gradient matmuls in the frozen linears (torchao float8 training; "
                              "GPUs with compute capability 8.9+, pip install 'vpt[fp8]')")
    seed: int = option(0, "seed of init, sampling order, augmentation (per sample) and dropout")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms (slower on GPU)")
    device: Optional[str] = option(None, "cpu | cuda | cuda:N (null: cuda if available, cuda:LOCAL_RANK under "
                                         "torchrun)")
    workers: int = option(2, "DataLoader worker processes per rank (0: load in the main process)", range=(0, None))
    log_interval: int = option(50, "log the running loss every N optimizer steps (0: off)", range=(0, None))
    progress: Optional[bool] = option(None, "progress bars (null: only on a TTY and on rank 0)")
    eval_every: int = option(1, "evaluate on val every N epochs (always after the last)", range=(1, None))
    init_from: Optional[str] = option(None, "start from an artifact's trainable tensors (a new run: new optimizer "
                                            "and schedule)")

    def check(self) -> None:
        self.amp_dtype = amp_dtype_name(self.amp_dtype)


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
    """Check the engine's sections (train, optim, sched) again, e.g. after a caller changed a field in place;
    each section checks itself when it is made (``__post_init__``), so a recipe is checked when loaded. The
    message names the field and the fix. Tasks check their own sections in ``Task.validate``."""
    for name in ("train", "optim", "sched"):
        section = getattr(cfg, name, None)
        if isinstance(section, Checked):
            try:
                section.__post_init__()
            except FieldError as e:
                raise e.under(name) from None
    return cfg
