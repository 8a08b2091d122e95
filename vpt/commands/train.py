"""``vpt train -c configs/RECIPE.yaml --data DIR [flags] [--set section.field=value ...]``

Precedence: the recipe YAML gives defaults, flags override it (timm's names where the meaning matches),
``--set`` reaches any field. ``--resume`` continues the run in ``--output`` from its saved config.
Under ``torchrun --nproc_per_node=N -m vpt train ...`` the run is data-parallel (DDP) over N processes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any, Dict, Optional

from ._common import UserError, load_yaml, resolve_config

KILL_ENV = "VPT_TEST_KILL_AT_STEP"  # test hook: SIGKILL this process after that optimizer step (resume tests)

# flag dest -> dotted config field
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
    "tensorboard": "output.tensorboard",
}


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """The flags train / eval / predict share (also read by vpt.detection.commands)."""
    p.add_argument("-c", "--config", metavar="YAML", help="recipe file (configs/*.yaml)")
    p.add_argument("--data", metavar="DIR", help="image folder (root/<class>/* or root/{train,val,test}/<class>/*) "
                                                 "or a CSV of path,label[,split]")
    p.add_argument("--output", metavar="DIR", help="run folder (default: the recipe's output.dir)")
    p.add_argument("--task", choices=["classification", "detection"], help="default: the recipe's task")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, metavar="LR", help="absolute learning rate (default: lr_base * batch / 256)")
    p.add_argument("-b", "--batch-size", type=int, metavar="N", help="global batch per optimizer step")
    p.add_argument("--seed", type=int)
    p.add_argument("--amp-dtype", metavar="DTYPE", help="float32 | bfloat16 | float16")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("-j", "--workers", type=int, metavar="N", help="DataLoader workers per process")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field (repeatable), e.g. --set model.prompt.num_tokens=50")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output")


def register(sub) -> None:
    p = sub.add_parser("train", help="train prompts / heads on an image folder", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
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
    g.add_argument("--hflip", type=float)
    g.add_argument("--color-jitter", type=float)
    g.add_argument("--strict-data", action="store_true", help="stop on a corrupt image instead of skipping it")
    g.add_argument("--tensorboard", action="store_const", const=True, help="also log to TensorBoard")
    p.set_defaults(func=run)


def recipe_task(args) -> str:
    if getattr(args, "task", None):
        return args.task
    if getattr(args, "config", None):
        return str(load_yaml(args.config).get("task", "classification"))
    artifact = getattr(args, "artifact", None)  # eval / predict: the artifact says what it is
    if artifact and os.path.isfile(os.path.join(artifact, "adapter_config.json")):
        try:
            with open(os.path.join(artifact, "adapter_config.json"), encoding="utf-8") as f:
                if json.load(f).get("model_type") == "detection":
                    return "detection"
        except (OSError, ValueError, AttributeError):
            pass  # from_pretrained reports a broken artifact with its own message
    return "classification"


def _flags(args) -> Dict[str, Any]:
    flags = {dotted: getattr(args, dest, None) for dest, dotted in FLAG_FIELDS.items()}
    if getattr(args, "strict_data", False):
        flags["data.skip_corrupt"] = False
    if flags["data.root"]:
        flags["data.root"] = os.path.abspath(flags["data.root"])
    return flags


def resolve_run_config(args):
    """RunConfig from recipe <- flags <- --set; with --resume the run folder's saved config is the base."""
    from ..engine.config import RunConfig, validate
    flags = _flags(args)
    if args.resume:
        out = args.output or (load_yaml(args.config).get("output", {}).get("dir") if args.config else None)
        if not out:
            raise UserError("--resume needs the run folder: pass --output DIR")
        saved = os.path.join(out, "config.yaml")
        if not os.path.isfile(saved):
            raise UserError(f"--resume: {out!r} has no config.yaml, so it holds no run to resume; "
                            f"drop --resume to start a new run there")
        if args.config:
            logging.getLogger(__name__).warning("--resume: using %s, not %s", saved, args.config)
        cfg = resolve_config(RunConfig, saved, flags, args.set)
    else:
        cfg = resolve_config(RunConfig, args.config, flags, args.set)
    return validate(cfg)


def _kill_hook() -> Optional[Any]:
    at = os.environ.get(KILL_ENV)
    if not at:
        return None
    at = int(at)

    def hook(step: int) -> None:
        if step == at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def run(args) -> int:
    if recipe_task(args) == "detection":
        from ..detection import commands as det
        return int(det.train(args) or 0)
    from ..data import CorruptImageError, DataError
    from ..engine import RunDirError, init_distributed, teardown_distributed
    from ..engine.checkpoint import ResumeError
    from ..engine.trainer import train

    cfg = resolve_run_config(args)
    if cfg.task != "classification":
        raise UserError(f"task {cfg.task!r} in the config; `vpt train` runs classification here "
                        f"(use --task detection for detection)")
    if not cfg.data.root:
        raise UserError("no data given: pass --data DIR (or set data.root in the recipe)")
    info = init_distributed(cfg.train.device)
    if not info.is_main:
        logging.getLogger("vpt").setLevel(logging.WARNING)
    try:
        results = train(cfg, info, resume=args.resume, overwrite=args.overwrite, on_step=_kill_hook())
    except (DataError, RunDirError, ResumeError, CorruptImageError) as e:
        raise UserError(str(e)) from None
    finally:
        teardown_distributed()
    if info.is_main:
        test, val = results["test"], results["val"]
        print(f"run folder: {cfg.output.dir}")
        print(f"best epoch: {results['best_epoch']} ({results['selection']})"
              + (f", val top-1 {val['top1']:.2f}" if val else ""))
        if test:
            print(f"test top-1 {test['top1']:.2f}  top-5 {test['top5']:.2f}  "
                  f"mean per-class recall {test['mean_per_class_recall']:.2f}  (n={test['num_samples']})")
        print(f"artifact: {os.path.join(cfg.output.dir, 'best')}")
    return 0
