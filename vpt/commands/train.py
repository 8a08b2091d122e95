"""``vpt train --data DIR [-c RECIPE] [flags] [--set section.field=value ...]``

Without -c, the embedded default recipe ``vpt_deep_vit_tiny_cifar10`` prompt-tunes the ViT that ships with vpt
(VPT-deep on ``vpt:vit_tiny_cifar10``): offline, minutes on a CPU. -c takes a packaged recipe's name
(``vpt list recipes``; e.g. ``-c vpt_deep_vitb16_in21k``, the paper's recipe on ViT-B/16 IN-21k from the hub) or
the path of a YAML file. Precedence: the recipe gives defaults, flags override it (timm's names where the
meaning matches), ``--set`` reaches any field (a YAML mapping replaces a section: ``--set 'model.prompt={kind:
pixel_pad, width: 4}'``). ``--model`` replaces the recipe's whole backbone section.

The run folder (``--output``) is written only once the run can start (config, data, weights, device checked);
a folder whose run never finished an epoch is taken over. ``--resume`` continues the run in ``--output`` from
its saved config, exactly: a flag that would change what it computes is refused (start a new run with
``--init-from RUN/best`` instead); ``--epochs`` may grow only where the finished epochs' learning rates do
not depend on the total (a constant schedule, or epochs that were all warmup).
On one of CoOp's dataset folders a CLIP recipe that leaves KgCoOp's ``text.templates`` (or zero-shot CLIP's
``head.templates``) unset gets the hand-crafted prompt the paper's code uses there (docs/benchmarks.md).
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

from ._common import UserError, load_yaml, recipe_path, replace_backbone, resolve_config

_logger = logging.getLogger("vpt.commands.train")

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
    "init_from": "train.init_from",
}
# flags that replace the backbone section as a whole (see _common.replace_backbone), not one field of it
BACKBONE_FLAGS = ("model", "weights")
# what --resume may change: where and how the run executes, not what it computes (data.root: the data's content
# is checked by its fingerprint, so a moved folder resumes)
# train.epochs: the engine decides (it may grow where the finished steps' learning rates don't depend on it)
RESUME_MAY_CHANGE = ("train.device", "train.workers", "train.progress", "train.log_interval", "train.eval_batch_size",
                     "output.dir", "output.tensorboard", "data.root", "train.epochs")


def add_input_flags(p: argparse.ArgumentParser) -> None:
    """The flags train and eval share: where the recipe and data are, and how to run the model."""
    from ..registry import TASKS
    p.add_argument("-c", "--config", metavar="RECIPE",
                   help="a packaged recipe's name (`vpt list recipes`, e.g. tiny_offline) or a YAML file; "
                        "vpt train's default: vpt_deep_vit_tiny_cifar10")
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
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last finished epoch, with its own settings (a flag "
                        "that changes them is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    add_training_flags(p)
    p.set_defaults(func=run)


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The flags that set training fields (``FLAG_FIELDS``); ``vpt sweep`` takes them as fixed settings."""
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, metavar="LR", help="absolute learning rate (default: lr_base * batch / 256)")
    p.add_argument("--seed", type=int)
    g = p.add_argument_group("model and optimisation (timm's flag names)")
    g.add_argument("--model", metavar="NAME", help="backbone, e.g. timm:vit_base_patch16_224.augreg_in21k; replaces "
                                                   "the recipe's backbone section (add fields with --set)")
    g.add_argument("--weights", metavar="FILE", help="local backbone weights file")
    g.add_argument("--init-from", metavar="ARTIFACT", help="start from an artifact's trainable tensors (prompts, head), "
                                                           "e.g. runs/x/best or a run folder: a new run, new schedule")
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


def use_default_recipe(args) -> Optional[str]:
    """Without -c (and not resuming), `vpt train` of a classification task runs the packaged default recipe;
    returns the line that says so (None when a recipe was given)."""
    from .. import recipes
    if getattr(args, "config", None) or getattr(args, "resume", False) or getattr(args, "task", None) not in (
            None, "classification"):
        return None
    args.config = recipes.DEFAULT  # a name: results.json's command reads `-c vpt_deep_vit_tiny_cifar10`
    return (f"recipe: {recipes.DEFAULT} (the default: VPT-deep on the shipped vpt:vit_tiny_cifar10, offline); "
            f"choose another with -c NAME or -c FILE (`vpt list recipes`), e.g. -c vpt_deep_vitb16_in21k for "
            f"ViT-B/16 IN-21k from the hub")


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
        if dest == "init_from":
            value = os.path.abspath(os.path.expanduser(value))
        dotted = task_cls.field_aliases.get(dotted, dotted)
        if not has_field(task_cls.config_cls, dotted):
            refused.append("--" + dest.replace("_", "-"))
            continue
        if dest in BACKBONE_FLAGS:
            continue  # the backbone section as a whole: resolve_run_config
        flags[dotted] = os.path.abspath(value) if dest == "data" else value
    if refused:
        raise UserError(f"{', '.join(refused)} do(es) not apply to {task_cls.name}; remove it (`vpt list recipes` "
                        f"shows the recipes with the {task_cls.name} settings)")
    return flags


def resolve_run_config(args, task_cls=None):
    """The task's run config from recipe <- flags <- --set; with --resume the run folder's saved config is the
    base, and a flag or --set that changes what the run computes is refused (see ``check_resume``)."""
    from ..tasks import task_class
    task_cls = task_cls or task_class(recipe_task(args))
    flags = _flags(args, task_cls)
    recipe = args.config
    resume = getattr(args, "resume", False)
    if resume:
        out = _run_folder(args)
        if not out:
            raise UserError("--resume needs the run folder: pass --output DIR")
        recipe = os.path.join(out, "config.yaml")
        if not os.path.isfile(recipe):
            raise UserError(f"--resume: {out!r} has no config.yaml, so it holds no run to resume; "
                            f"drop --resume to start a new run there")
        if args.config:
            _logger.warning("--resume: using %s, not %s", recipe, args.config)
        flags["output.dir"] = out
    model, weights = getattr(args, "model", None), getattr(args, "weights", None)
    if model is not None or weights is not None:
        data = load_yaml(recipe) if recipe else {}
        replace_backbone(data, model, os.path.abspath(os.path.expanduser(weights)) if weights else None)
        flags["model.backbone"] = data["model"]["backbone"]
    cfg = resolve_config(task_cls.config_cls, recipe, flags, args.set, fill=None if resume else reference_templates)
    if resume:
        check_resume(args, task_cls, recipe, cfg)
    return cfg


def reference_templates(data: Dict[str, Any]) -> None:
    """On one of CoOp's datasets, set the hand-crafted prompt the method's paper code uses for it (KgCoOp's text,
    zero-shot CLIP's head: ``vpt.clip.reference_prompt``) where the merged recipe + flags + --set leave it unset;
    a value set there is kept (the opt-out, docs/benchmarks.md). The run's config.yaml records the choice."""
    from ..clip import reference_prompt
    from ..data.benchmarks import coop_dataset_name
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    root = section.get("root")
    if not isinstance(root, str) or section.get("format", "auto") not in ("auto", "coop"):
        return
    dataset = coop_dataset_name(os.path.expanduser(root))
    found = reference_prompt(data.get("model") or {}, dataset) if dataset else None
    if found:
        field, templates = found
        data["model"].setdefault(field.split(".")[0], {})[field.split(".")[1]] = templates
        _logger.info("CoOp's %s: model.%s = %s, the hand-crafted prompt of the paper's code for it (set "
                     "model.%s to choose another)", dataset, field, templates, field)


def check_resume(args, task_cls, saved_path: str, cfg) -> None:
    """--resume continues a run as it was started: every setting that changes what it computes must equal the
    run's (config.yaml); otherwise refuse, listing the differences and the command of a new run instead."""
    from ..config import to_dict
    out = os.path.dirname(saved_path)
    saved = resolve_config(task_cls.config_cls, saved_path, {"output.dir": out}, [])
    diffs = [d for d in _config_diff(to_dict(saved), to_dict(cfg), "")
             if not any(d[0] == k or d[0].startswith(k + ".") for k in RESUME_MAY_CHANGE)]
    if not diffs:
        return
    listed = "; ".join(f"{k}: {old!r} in the run, {new!r} now" for k, old, new in diffs[:8])
    best = os.path.join(out, "best")
    has_best = os.path.isfile(os.path.join(best, "adapter_config.json"))
    new_out = out.rstrip(os.sep) + "_2"
    cmd = command_line(args, exclude=("resume", "output", "overwrite"), config=saved_path)
    cmd += f" --output {shlex.quote(new_out)}"
    if has_best:
        cmd += f" --init-from {shlex.quote(best)}"
    raise UserError(
        f"--resume continues the run in {out!r} exactly as it started, and these settings differ from its "
        f"config.yaml: {listed}. To resume it, drop the flags / --set that change them. To train with the new "
        f"settings, start a new run" + (" from this run's best model" if has_best else "") + f": {cmd}")


def _config_diff(old: Any, new: Any, where: str):
    """(dotted key, old, new) for every leaf that differs between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _config_diff(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if old == new else [(where, old, new)]


def command_line(args, exclude=(), config: Optional[str] = None) -> str:
    """The command line that reproduces this call (for results.json); ``exclude`` leaves flags out and
    ``config`` replaces -c (check_resume builds the new-run command from them)."""
    parts = ["vpt", "train", "--task", recipe_task(args)]
    if config or args.config:
        parts += ["-c", config or args.config]
    for dest in list(FLAG_FIELDS) + ["resume", "overwrite"]:
        if dest in exclude:
            continue
        v = getattr(args, dest, None)
        if v is not None and v is not False and dest != "strict_data":
            flag_only = v is True or dest == "base_to_novel"  # store_const flags take no value
            parts += [f"--{dest.replace('_', '-')}"] + ([] if flag_only else [str(v)])
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
    from ..engine.trainer import LogBuffer
    from ..tasks import task_class

    log = LogBuffer.start()  # what is logged before the run folder exists goes into its train.log too
    try:
        note = use_default_recipe(args)
        if note:
            _logger.info("%s", note)
        elif args.config and not args.resume:
            found = recipe_path(args.config)
            _logger.info("recipe: %s", args.config if found == args.config else f"{args.config} ({found})")
        task_cls = task_class(recipe_task(args))
        cfg = resolve_run_config(args, task_cls)
        if cfg.task != task_cls.name:
            raise UserError(f"the recipe says task {cfg.task!r} but --task is {task_cls.name!r}; drop one")
        task = task_cls(cfg)
        info = init_distributed(cfg.train.device)
    except BaseException:
        log.stop()
        raise
    if not info.is_main:
        logging.getLogger("vpt").setLevel(logging.WARNING)
    callbacks = [cb for cb in (kill_callback(),) if cb is not None]
    try:
        results = train(task, info, resume=args.resume, overwrite=args.overwrite, callbacks=callbacks,
                        command=command_line(args), log_buffer=log)
    finally:
        log.stop()
        teardown_distributed(info)
    if info.is_main:
        print(f"run folder: {cfg.output.dir}")
        for line in task.summary(results):
            print(line)
        print(f"artifact: {os.path.join(cfg.output.dir, 'best')}; results: {os.path.join(cfg.output.dir, 'results.json')}")
    return 0
