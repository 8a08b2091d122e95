"""``vpt eval ARTIFACT --data DIR [--split test]``: evaluate a saved artifact with its backbone's own
preprocessing. Inside a run folder (ARTIFACT/../config.yaml), the run's data settings and AMP dtype are
reused, so the test metric reproduces results.json exactly. The artifact's model type picks the task."""
from __future__ import annotations

import argparse
import os

from ._common import UserError, apply_sets, load_yaml


def register(sub) -> None:
    from .train import add_input_flags
    p = sub.add_parser("eval", help="evaluate an artifact on a data folder", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact folder (e.g. runs/x/best)")
    add_input_flags(p)
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test",
                   help="which split to evaluate (default: test)")
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if the artifact's has moved")
    from .predict import add_max_params
    add_max_params(p)
    p.add_argument("--json", metavar="FILE", dest="json_out", help="also write the metrics to this JSON file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--base-to-novel", action="store_true",
                   help="CLIP: the artifact was trained on the base classes of --data; report base, novel and HM "
                        "top-1 of its prompts on the --split images of both halves")
    g.add_argument("--transfer", nargs="+", metavar="DIR",
                   help="CLIP cross-dataset: evaluate the learned prompts on each folder's own classes")
    p.set_defaults(func=run)


def task_for_artifact(artifact: str, task: str = None) -> type:
    """--task, else the task whose ``model_types`` hold the artifact's model type (classification by default)."""
    from ..registry import TASKS
    from ..tasks import task_class
    from ..tasks.classification import artifact_model_type
    if task:
        return task_class(task)
    model_type = artifact_model_type(artifact) or "classifier"
    for entry in TASKS:
        if model_type in entry.factory.model_types:
            return entry.factory
    return task_class("classification")


def run_config_for(args, task_cls):
    """Run config for evaluation: the run's own config.yaml next to the artifact (or -c), then flags and --set."""
    from ..config import from_dict
    from ..engine.config import amp_dtype_name
    saved = os.path.join(os.path.dirname(os.path.abspath(args.artifact)), "config.yaml")
    path = args.config or (saved if os.path.isfile(saved) else None)
    data = load_yaml(path) if path else {}
    data.pop("task", None)
    apply_sets(data, args.set)
    cfg = from_dict(task_cls.config_cls, data)
    if args.data:
        cfg.data.root = os.path.abspath(args.data)
    for flag, field in (("batch_size", "eval_batch_size"), ("amp_dtype", "amp_dtype"), ("device", "device"),
                        ("workers", "workers")):
        if getattr(args, flag, None) is not None:
            setattr(cfg.train, field, getattr(args, flag))
    cfg.train.amp_dtype = amp_dtype_name(cfg.train.amp_dtype)
    return cfg, path


def run(args) -> int:
    from .. import from_pretrained
    from ..engine import resolve_device

    task_cls = task_for_artifact(args.artifact, args.task)
    cfg, path = run_config_for(args, task_cls)
    task = task_cls(cfg)
    device = resolve_device(cfg.train.device)
    model = from_pretrained(args.artifact, weights=args.weights, device=device, max_params=args.max_params)
    if getattr(model, "model_type", None) not in task_cls.model_types:
        raise UserError(f"{args.artifact} holds a {getattr(model, 'model_type', '?')} model, which task "
                        f"{task_cls.name!r} does not evaluate; drop --task")
    if args.base_to_novel or args.transfer:
        return run_protocol(args, cfg, path, model, device)
    metrics = task.evaluate_artifact(model, args.split, device)
    out = {"artifact": os.path.abspath(args.artifact), "data": cfg.data.root, "run_config": path, **metrics}
    print(task.eval_summary(args.split, metrics))
    if args.json_out:
        from ..io import atomic_write_json
        atomic_write_json(args.json_out, out)
        print(f"metrics written to {args.json_out}")
    return 0


def run_protocol(args, cfg, path, model, device) -> int:
    """``--base-to-novel`` / ``--transfer``: the learned prompts on other classes than the artifact's."""
    import copy

    from ..io import atomic_write_json
    from ..tasks import protocols
    if getattr(model, "model_type", None) != "clip":
        raise UserError(f"--base-to-novel / --transfer need a CLIP artifact (its classifier comes from class names); "
                        f"{args.artifact!r} is a {getattr(model, 'model_type', type(model).__name__)!r} model")
    out = {"artifact": os.path.abspath(args.artifact), "split": args.split, "run_config": path}
    if args.base_to_novel:
        if not cfg.data.root:
            raise UserError("no data given: pass --data DIR (the folder whose base classes were trained)")
        res = protocols.base_to_novel(model, cfg.data, cfg.train, device, split=args.split)
        out.update(data=cfg.data.root, **res)
        print(f"base-to-novel ({args.split}): base {res['base']:.2f}  novel {res['novel']:.2f}  HM {res['hm']:.2f}")
    else:
        out["transfer"] = {}
        for root in args.transfer:
            data = copy.deepcopy(cfg.data)
            data.root, data.classes = os.path.abspath(root), "all"
            m = protocols.evaluate_classes(model, data, "all", args.split, cfg.train, device)
            out["transfer"][data.root] = protocols.brief(m)
            print(f"{root}: {args.split} top-1 {m['top1']:.2f}  ({len(m['classes'])} classes, n={m['num_samples']})")
    if args.json_out:
        atomic_write_json(args.json_out, out)
        print(f"metrics written to {args.json_out}")
    return 0
