"""``vpt eval ARTIFACT --data DIR [--split test]``: evaluate a saved artifact with its backbone's own
preprocessing. Inside a run folder (ARTIFACT/../config.yaml), the run's data settings and AMP dtype are
reused, so the test metric reproduces results.json exactly. The artifact names its task (its model class
does); --task may name a task it derives from.

exit status:
  0  evaluated (metrics printed, and written with --json)
  1  the file system refused a write (--json on a full disk or a read-only folder)
  2  nothing evaluated: a usage error, an artifact that is refused, no or missing data folder, classes
     that differ from the artifact's, an empty split (the message says why and what to do)"""
from __future__ import annotations

import argparse
import os

from ._artifact import add_artifact_flags, check_max_params
from ._common import UserError, apply_sets, load_yaml


def register(sub) -> None:
    from .train import add_input_flags
    p = sub.add_parser("eval", help="evaluate an artifact on a data folder", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact folder (e.g. runs/x/best) or hub task "
                                                        "(hf://ORG/NAME[@REVISION])")
    add_input_flags(p)
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test",
                   help="which split to evaluate (default: test)")
    add_artifact_flags(p)
    p.add_argument("--json", metavar="FILE", dest="json_out", help="also write the metrics to this JSON file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--base-to-novel", action="store_true",
                   help="CLIP: the artifact was trained on the base classes of --data; report base, novel and HM "
                        "top-1 of its prompts on the --split images of both halves")
    g.add_argument("--transfer", nargs="+", metavar="DIR",
                   help="CLIP cross-dataset: evaluate the learned prompts on each folder's own classes")
    p.set_defaults(func=run)


def run_config_for(args, task_cls):
    """Run config for evaluation: the run's own config.yaml next to the artifact (or -c), then flags and --set."""
    from ..config import from_dict
    from ..engine.config import amp_dtype_name
    from ..hub import is_hub_uri
    saved = os.path.join(os.path.dirname(os.path.abspath(args.artifact)), "config.yaml")
    path = args.config or (saved if os.path.isfile(saved) and not is_hub_uri(args.artifact) else None)
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


def _check_data(args, cfg, path) -> None:
    """A data folder is given and exists, before the model is built."""
    root = cfg.data.root
    if not root:
        raise UserError("no data given: pass --data DIR (the folder to evaluate on; inside a run folder its "
                        "config.yaml names the run's data)")
    if not os.path.exists(root):
        source = "--data" if args.data else f"data.root of {path}"
        raise UserError(f"data folder not found: {root!r} ({source}); pass --data DIR with the images to "
                        f"evaluate on")


def run(args) -> int:
    from ..artifact import Artifact
    from ..engine import resolve_device
    from ..tasks import task_for_artifact

    check_max_params(args.max_params)
    artifact = Artifact.open(args.artifact)  # the one read of adapter_config.json
    task_cls = task_for_artifact(artifact, args.task)
    if (args.base_to_novel or args.transfer) and artifact.model_type != "clip":
        raise UserError(f"--base-to-novel / --transfer need a CLIP artifact (its classifier comes from class names); "
                        f"{args.artifact!r} is a {artifact.model_type!r} model")
    cfg, path = run_config_for(args, task_cls)
    if args.transfer:
        missing = [root for root in args.transfer if not os.path.isdir(root)]
        if missing:
            raise UserError(f"--transfer folder not found: {missing[0]!r}; pass image folders (root/<class>/*)")
    else:
        _check_data(args, cfg, path)
    task = task_cls(cfg)
    device = resolve_device(cfg.train.device)
    model = artifact.load(device=device, weights=args.weights, max_params=args.max_params)
    if args.base_to_novel or args.transfer:
        return run_protocol(args, cfg, path, model, device, artifact.source)
    metrics = task.evaluate_artifact(model, args.split, device)
    out = {"artifact": artifact.source, "revision": artifact.revision, "data": cfg.data.root, "run_config": path,
           **metrics}
    print(task.eval_summary(args.split, metrics))
    if args.json_out:
        from ..io import atomic_write_json
        atomic_write_json(args.json_out, out)
        print(f"metrics written to {args.json_out}")
    return 0


def run_protocol(args, cfg, path, model, device, source: str) -> int:
    """``--base-to-novel`` / ``--transfer``: the learned prompts on other classes than the artifact's."""
    import copy

    from ..io import atomic_write_json
    from ..tasks import protocols
    out = {"artifact": source, "revision": getattr(model, "revision", None), "split": args.split, "run_config": path}
    if args.base_to_novel:
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
