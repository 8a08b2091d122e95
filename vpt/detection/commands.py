"""`vpt train / eval / predict --task detection`: the CLI calls these with its argparse Namespace.

Precedence as for classification: recipe file (``-c``) <- flags that were given <- ``--set a.b=c``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
from typing import Any, Dict, List, Optional

from ..commands._common import UserError, load_yaml, resolve_config
from ..config import from_dict, to_dict
from .config import DetDataConfig, DetectionRunConfig

_logger = logging.getLogger(__name__)

# `vpt train` flag dest -> dotted field of DetectionRunConfig (the same names as classification's)
TRAIN_FLAGS = {"data": "data.root", "output": "output.dir", "epochs": "train.epochs", "lr": "optim.lr",
               "batch_size": "train.batch_size", "seed": "train.seed", "amp_dtype": "train.amp_dtype",
               "device": "train.device", "workers": "train.workers", "model": "model.backbone.name",
               "weights": "model.backbone.weights", "opt": "optim.opt", "lr_base": "optim.lr_base",
               "weight_decay": "optim.weight_decay", "momentum": "optim.momentum", "clip_grad": "optim.clip_grad",
               "sched": "sched.sched", "warmup_epochs": "sched.warmup_epochs", "min_lr": "sched.min_lr",
               "eval_batch_size": "train.eval_batch_size", "hflip": "data.hflip", "tensorboard": "output.tensorboard"}
# classification flags with no meaning for detection: refused rather than silently ignored
NOT_FOR_DETECTION = ("grad_accum_steps", "torchcompile", "smoothing", "val_fraction", "test_fraction", "split_seed",
                     "shots", "color_jitter", "strict_data")


def _get(args: argparse.Namespace, *names: str) -> Any:
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            return v
    return None


def _command(verb: str, args: argparse.Namespace, flags: Dict[str, str], positional: Optional[List[str]] = None) -> str:
    """The command line that reproduces this call (for results.json)."""
    parts = ["vpt", verb, "--task", "detection", *(positional or [])]
    if getattr(args, "config", None):
        parts += ["-c", args.config]
    for attr in flags:
        v = getattr(args, attr, None)
        if v is not None and v is not False:
            parts += [f"--{attr.replace('_', '-')}"] + ([] if v is True else [str(v)])
    for s in getattr(args, "set", None) or []:
        parts += ["--set", s]
    return " ".join(shlex.quote(p) for p in parts)


def build_run_config(args: argparse.Namespace) -> DetectionRunConfig:
    """Recipe <- flags <- --set; with --resume the run folder's saved config.yaml is the recipe."""
    given = [f"--{a.replace('_', '-')}" for a in NOT_FOR_DETECTION if getattr(args, a, None) not in (None, False)]
    if given:
        raise UserError(f"{', '.join(given)} do(es) not apply to detection; remove it (see configs/det_*.yaml "
                        f"for the detection settings)")
    flags = {dotted: getattr(args, attr, None) for attr, dotted in TRAIN_FLAGS.items()}
    if flags["data.root"]:
        flags["data.root"] = os.path.abspath(flags["data.root"])
    recipe = getattr(args, "config", None)
    if getattr(args, "resume", False):
        out = flags["output.dir"] or (load_yaml(recipe).get("output", {}).get("dir") if recipe else None)
        if not out:
            raise UserError("--resume needs the run folder: pass --output DIR")
        recipe = os.path.join(out, "config.yaml")
        if not os.path.isfile(recipe):
            raise UserError(f"--resume: {out!r} has no config.yaml, so it holds no run to resume; drop --resume")
        flags["output.dir"] = out
    return resolve_config(DetectionRunConfig, recipe, flags, getattr(args, "set", None))


def train(args: argparse.Namespace) -> int:
    from .engine import train_detector
    cfg = build_run_config(args)
    res = train_detector(cfg, resume=bool(getattr(args, "resume", False)),
                         overwrite=bool(getattr(args, "overwrite", False)),
                         command=_command("train", args, {**TRAIN_FLAGS, "resume": 1, "overwrite": 1}))
    val, test = res["val"], res["test"]
    print(f"best epoch {res['best_epoch']}: val mAP {val['mAP']:.4f} mAP@0.5 {val['mAP50']:.4f}" if val
          else "no val split: kept the last epoch")
    if test:
        print(f"test mAP {test['mAP']:.4f} mAP@0.5 {test['mAP50']:.4f}; per class: "
              + ", ".join(f"{k} {v:.3f}" for k, v in test["per_class_AP"].items()))
    print(f"artifact: {os.path.join(cfg.output.dir, 'best')}; results: {os.path.join(cfg.output.dir, 'results.json')}")
    return 0


def _artifact(args: argparse.Namespace) -> str:
    path = _get(args, "artifact", "model", "checkpoint", "path")
    if not path:
        raise UserError("pass the artifact folder (e.g. runs/detection/best)")
    return path


def _data_config(args: argparse.Namespace, artifact: str) -> DetDataConfig:
    """-c recipe, else the run's config.yaml next to the artifact, else defaults; then --data and --set."""
    data: Dict[str, Any] = {}
    path = getattr(args, "config", None)
    run_cfg = os.path.join(os.path.dirname(os.path.abspath(artifact)), "config.yaml")
    if path:
        data = load_yaml(path)
    elif os.path.isfile(run_cfg):
        data = load_yaml(run_cfg)
        _logger.info("data settings from the run's %s", run_cfg)
    cfg = from_dict(DetectionRunConfig, data)
    d = to_dict(cfg.data)
    if getattr(args, "data", None):
        d["root"] = args.data
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        if key.startswith("data."):
            from ..commands._common import parse_value
            d[key[5:]] = parse_value(value)
    return from_dict(DetDataConfig, d, where="data")


def _load(args: argparse.Namespace):
    from ..artifact import from_pretrained
    from ..engine import resolve_device
    artifact = _artifact(args)
    device = resolve_device(_get(args, "device"))
    model = from_pretrained(artifact, weights=_get(args, "weights"), device=device)
    if getattr(model, "model_type", None) != "detection":
        raise UserError(f"{artifact} holds a {getattr(model, 'model_type', '?')} model, not a detector; "
                        f"drop --task detection")
    return artifact, model, device


def evaluate(args: argparse.Namespace) -> int:
    from ..io import atomic_write_json
    from .coco_eval import mean_ap_dict
    from .data import read_split
    from .engine import evaluate_detector
    artifact, model, device = _load(args)
    dcfg = _data_config(args, artifact)
    if not dcfg.root:
        raise UserError("no data folder: pass --data DIR (VOC or COCO layout)")
    split = _get(args, "split") or "test"
    if split == "all":
        raise UserError("--split all is not supported for detection; evaluate train, val and test one at a time")
    split = {"train": dcfg.train_split, "val": dcfg.val_split, "test": dcfg.test_split}.get(split, split)
    records, _, stats = read_split(dcfg, split, model.class_names)
    metrics = evaluate_detector(model, records, device, int(_get(args, "batch_size") or 8),
                                str(_get(args, "amp_dtype") or "float32"), int(_get(args, "workers") or 0))
    result = {"artifact": artifact, "split": split, "data": dcfg.root, **metrics,
              "boxes": {"kept": stats.kept, "dropped_degenerate": stats.degenerate, "dropped_outside": stats.outside},
              "command": _command("eval", args, {"data": 1, "split": 1, "device": 1}, [artifact])}
    out = _get(args, "json_out", "output")
    if out:
        path = out if out.endswith(".json") else os.path.join(out, "eval_results.json")
        atomic_write_json(path, result)
        print(f"metrics written to {path}")
    print(f"{split}: {mean_ap_dict(metrics)} ({metrics['num_images']} images, evaluator {metrics['evaluator']})")
    return 0


def predict(args: argparse.Namespace) -> int:
    from .predict import collect_images, predict_images
    if getattr(args, "format", "json") not in (None, "json"):
        raise UserError("detection predictions are written as PNGs plus detections.json; drop --format")
    artifact, model, device = _load(args)
    inputs = _get(args, "inputs", "images", "input", "paths")
    if isinstance(inputs, str):
        inputs = [inputs]
    out = _get(args, "output") or "predictions"
    thresh = _get(args, "score_thresh", "threshold")
    res = predict_images(model, collect_images(inputs or []), out, device,
                         score_thresh=float(thresh) if thresh is not None else 0.3,
                         batch_size=int(_get(args, "batch_size") or 4))
    n = sum(len(im["detections"]) for im in res["images"])
    print(f"{n} detections in {len(res['images'])} images -> {out}/ (PNGs with boxes, detections.json)")
    return 0
