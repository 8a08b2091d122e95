"""``vpt train -c configs/RECIPE.yaml --data DIR [flags] [--set section.field=value ...]``

Precedence: the recipe YAML gives defaults, flags override it (timm's names where the meaning matches),
``--set`` reaches any field. ``--resume`` continues the run in ``--output`` from its saved config.
The recipe's ``task`` (or ``--task``) picks the task: classification, clip or detection (``vpt list``).
Under ``torchrun --nproc_per_node=N -m vpt train ...`` the run is data-parallel (DDP) over N processes.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import signal
import sys
import typing
from typing import Any, Dict, Optional

from ._common import UserError, load_yaml, resolve_config

KILL_ENV = "VPT_TEST_KILL_AT_STEP"  # test hook: SIGKILL this process after that optimizer step (resume tests)

# flag dest -> dotted config field (the same for every task; a task may keep a field elsewhere, see
# Task.field_aliases, and a flag whose field its config lacks is refused)
FLAG_FIELDS = {
    "data": "data.root", "output": "output.dir", "epochs": "train.epochs", "lr": "optim.lr",
    "lr_base": "optim.lr_base", "batch_size": "train.batch_size", "seed": "train.seed",
    "amp_dtype": "train.amp_dtype", "device": "train.device", "workers": "train.workers",
    "model": "model.backbone.name", "weights": "model.backbone.weights", "opt": "optim.opt",
    "weight_decay": "optim.weight_decay", "momentum": "optim.momentum", "clip_grad": "optim.clip_grad",
    "sched": "sched.sched", "warmup_epochs": "sched.warmup_epochs", "min_lr": "sched.min_lr",
    "grad_accum_steps": "train.grad_accum_steps", "torchcompile": "train.compile",
    "smoothing": "train.label_smoothing", "eval_batch_size": "train.eval_batch_size",
    "hflip": "augment.hflip", "color_jitter": "augment.color_jitter", "val_fraction": "data.val_fraction",
    "test_fraction": "data.test_fraction", "shots": "data.shots", "split_seed": "data.split_seed",
    "tensorboard": "output.tensorboard", "strict_data": "data.skip_corrupt", "base_to_novel": "data.classes",
}


def add_input_flags(p: argparse.ArgumentParser) -> None:
    """The flags train and eval share: where the recipe and data are, and how to run the model."""
    from ..registry import TASKS
    p.add_argument("-c", "--config", metavar="YAML", help="recipe file (configs/*.yaml)")
    p.add_argument("--data", metavar="DIR", help="image folder (root/<class>/* or root/{train,val,test}/<class>/*), "
                                                 "a CSV of path,label[,split], or a VOC / COCO folder (detection)")
    p.add_argument("--task", choices=TASKS.names(), help="default: the recipe's task (or the artifact's)")
    p.add_argument("-b", "--batch-size", type=int, metavar="N", help="train: global batch per optimizer step; "
                                                                     "eval: evaluation batch")
    p.add_argument("--amp-dtype", metavar="DTYPE", help="float32 | bfloat16 | float16")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("-j", "--workers", type=int, metavar="N", help="DataLoader workers per process")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field (repeatable), e.g. --set model.prompt.num_tokens=50")


def register(sub) -> None:
    p = sub.add_parser("train", help="train prompts / heads (classification, clip, detection)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_flags(p)
    p.add_argument("--output", metavar="DIR", help="run folder (default: the recipe's output.dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    add_training_flags(p)
    p.set_defaults(func=run)


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The flags that set training fields (``FLAG_FIELDS``); ``vpt sweep`` takes them as fixed settings."""
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, metavar="LR", help="absolute learning rate (default: lr_base * batch / 256)")
    p.add_argument("--seed", type=int)
    g = p.add_argument_group("model and optimisation (timm's flag names)")
    g.add_argument("--model", metavar="NAME", help="backbone, e.g. timm:vit_base_patch16_224.augreg_in21k")
    g.add_argument("--weights", metavar="FILE", help="local backbone weights file")
    g.add_argument("--opt", help="sgd | adamw")
    g.add_argument("--lr-base", type=float, help="base lr at batch 256 (VPT scaling)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--clip-grad", type=float)
    g.add_argument("--sched", help="cosine | constant")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--min-lr", type=float)
    g.add_argument("--grad-accum-steps", type=int)
    g.add_argument("--torchcompile", action="store_const", const=True, help="torch.compile the model")
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("-vb", "--eval-batch-size", type=int)
    g = p.add_argument_group("data and augmentation")
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--test-fraction", type=float)
    g.add_argument("--split-seed", type=int)
    g.add_argument("--shots", type=int, help="few-shot: k training images per class")
    g.add_argument("--base-to-novel", action="store_const", const="base",
                   help="CLIP: train on the base half of the sorted class names (data.classes=base), then test the "
                        "learned prompts on the base and the novel half; results.json gets base, novel and hm")
    g.add_argument("--hflip", type=float)
    g.add_argument("--color-jitter", type=float)
    g.add_argument("--strict-data", action="store_const", const=False,
                   help="stop on a corrupt image instead of skipping it")
    g.add_argument("--tensorboard", action="store_const", const=True, help="also log to TensorBoard")


def _run_folder(args) -> Optional[str]:
    return args.output or (load_yaml(args.config).get("output", {}).get("dir") if args.config else None)


def recipe_task(args) -> str:
    """--task, else the recipe's (on --resume: the run folder's saved config), else classification."""
    if getattr(args, "task", None):
        return args.task
    if getattr(args, "resume", False):
        out = _run_folder(args)
        saved = os.path.join(out, "config.yaml") if out else None
        if saved and os.path.isfile(saved):
            return str(load_yaml(saved).get("task", "classification"))
    if getattr(args, "config", None):
        return str(load_yaml(args.config).get("task", "classification"))
    return "classification"


def has_field(cls: type, dotted: str) -> bool:
    """Whether the dataclass ``cls`` has the (nested) field ``a.b.c``."""
    for key in dotted.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return False
        hints = typing.get_type_hints(cls)
        if key not in hints:
            return False
        cls = hints[key]
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        cls = args[0] if typing.get_origin(cls) is typing.Union and len(args) == 1 else cls
    return True


def _flags(args, task_cls) -> Dict[str, Any]:
    flags, refused = {}, []
    for dest, dotted in FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        dotted = task_cls.field_aliases.get(dotted, dotted)
        if not has_field(task_cls.config_cls, dotted):
            refused.append("--" + dest.replace("_", "-"))
            continue
        flags[dotted] = os.path.abspath(value) if dest == "data" else value
    if refused:
        raise UserError(f"{', '.join(refused)} do(es) not apply to {task_cls.name}; remove it (see the recipes in "
                        f"configs/ for the {task_cls.name} settings)")
    return flags


def resolve_run_config(args, task_cls=None):
    """The task's run config from recipe <- flags <- --set; with --resume the run folder's saved config is the base."""
    from ..tasks import task_class
    task_cls = task_cls or task_class(recipe_task(args))
    flags = _flags(args, task_cls)
    recipe = args.config
    if args.resume:
        out = _run_folder(args)
        if not out:
            raise UserError("--resume needs the run folder: pass --output DIR")
        recipe = os.path.join(out, "config.yaml")
        if not os.path.isfile(recipe):
            raise UserError(f"--resume: {out!r} has no config.yaml, so it holds no run to resume; "
                            f"drop --resume to start a new run there")
        if args.config:
            logging.getLogger(__name__).warning("--resume: using %s, not %s", recipe, args.config)
        flags["output.dir"] = out
    return resolve_config(task_cls.config_cls, recipe, flags, args.set)


def command_line(args) -> str:
    """The command line that reproduces this call (for results.json)."""
    parts = ["vpt", "train", "--task", recipe_task(args)]
    if args.config:
        parts += ["-c", args.config]
    for dest in list(FLAG_FIELDS) + ["resume", "overwrite"]:
        v = getattr(args, dest, None)
        if v is not None and v is not False and dest != "strict_data":
            parts += [f"--{dest.replace('_', '-')}"] + ([] if v is True else [str(v)])
    if getattr(args, "strict_data", None) is False:
        parts.append("--strict-data")
    for s in args.set or []:
        parts += ["--set", s]
    return " ".join(shlex.quote(p) for p in parts)


def kill_callback():
    """The KILL_ENV test hook as an engine callback (None when the variable is unset)."""
    at = os.environ.get(KILL_ENV)
    if not at:
        return None
    from ..engine import Callback
    at_step = int(at)

    class KillAtStep(Callback):
        def on_step_end(self, run, step, loss) -> None:
            if step == at_step:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    return KillAtStep()


def run(args) -> int:
    from ..engine import init_distributed, teardown_distributed, train
    from ..tasks import task_class

    task_cls = task_class(recipe_task(args))
    cfg = resolve_run_config(args, task_cls)
    if cfg.task != task_cls.name:
        raise UserError(f"the recipe says task {cfg.task!r} but --task is {task_cls.name!r}; drop one")
    task = task_cls(cfg)
    info = init_distributed(cfg.train.device)
    if not info.is_main:
        logging.getLogger("vpt").setLevel(logging.WARNING)
    callbacks = [cb for cb in (kill_callback(),) if cb is not None]
    try:
        results = train(task, info, resume=args.resume, overwrite=args.overwrite, callbacks=callbacks,
                        command=command_line(args))
    finally:
        teardown_distributed(info)
    if info.is_main:
        print(f"run folder: {cfg.output.dir}")
        for line in task.summary(results):
            print(line)
        print(f"artifact: {os.path.join(cfg.output.dir, 'best')}; results: {os.path.join(cfg.output.dir, 'results.json')}")
    return 0
