"""``vpt eval ARTIFACT --data DIR [--split test]``: evaluate a saved artifact with its backbone's own
preprocessing. Inside a run folder (ARTIFACT/../config.yaml), the run's data split settings and AMP dtype
are reused, so the test top-1 reproduces results.json exactly."""
from __future__ import annotations

import argparse
import os

from ._common import UserError, apply_sets, load_yaml


def register(sub) -> None:
    from .train import add_common_flags
    p = sub.add_parser("eval", help="evaluate an artifact on an image folder", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact folder (e.g. runs/x/best)")
    add_common_flags(p)
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test",
                   help="which split to evaluate (default: test)")
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if the artifact's has moved")
    p.add_argument("--json", metavar="FILE", dest="json_out", help="also write the metrics to this JSON file")
    p.set_defaults(func=run)


def run_config_for(args):
    """Run config for evaluation: the run's own config.yaml next to the artifact (or -c), then flags and --set."""
    from ..config import from_dict
    from ..engine.config import RunConfig, amp_dtype_name
    saved = os.path.join(os.path.dirname(os.path.abspath(args.artifact)), "config.yaml")
    path = args.config or (saved if os.path.isfile(saved) else None)
    data = load_yaml(path) if path else {}
    apply_sets(data, args.set)
    cfg = from_dict(RunConfig, data)
    if args.data:
        cfg.data.root = os.path.abspath(args.data)
    for flag, section, field in (("batch_size", cfg.train, "eval_batch_size"), ("amp_dtype", cfg.train, "amp_dtype"),
                                 ("device", cfg.train, "device"), ("workers", cfg.train, "workers")):
        if getattr(args, flag, None) is not None:
            setattr(section, field, getattr(args, flag))
    cfg.train.amp_dtype = amp_dtype_name(cfg.train.amp_dtype)
    return cfg, path


def run(args) -> int:
    from .train import recipe_task
    if recipe_task(args) == "detection":
        from ..detection import commands as det
        return int(det.evaluate(args) or 0)
    from .. import from_pretrained
    from ..engine.build import ensure_artifact_type, memory_format
    from ..data import DataError, ImageDataset, class_mismatch_message, load_splits
    from ..data.transforms import EvalTransform
    from ..engine import evaluate, resolve_device

    cfg, path = run_config_for(args)
    if not cfg.data.root:
        raise UserError("no data given: pass --data DIR")
    device = resolve_device(cfg.train.device)
    ensure_artifact_type(args.artifact)
    model = from_pretrained(args.artifact, weights=args.weights, device=device)
    d = cfg.data
    try:
        splits = load_splits(d.root, d.val_fraction, d.test_fraction, d.split_seed, d.shots, d.extensions)
    except DataError as e:
        raise UserError(str(e)) from None
    if model.class_names is not None and list(model.class_names) != splits.class_names:
        raise UserError(class_mismatch_message(list(model.class_names), splits.class_names, d.root))
    samples = (splits.train + splits.val + splits.test) if args.split == "all" else getattr(splits, args.split)
    if not samples:
        raise UserError(f"{d.root!r} has no {args.split} images ({splits.summary()}); choose another --split")
    dataset = ImageDataset(samples, EvalTransform(model.data_config), skip_corrupt=d.skip_corrupt)
    if cfg.train.channels_last:
        model.to(memory_format=memory_format(True))
    metrics = evaluate(model, dataset, splits.class_names, cfg.train.eval_batch_size, device, cfg.train.amp_dtype,
                       workers=cfg.train.workers, channels_last=cfg.train.channels_last)
    out = {"artifact": os.path.abspath(args.artifact), "data": d.root, "split": args.split,
           "run_config": path, **{k: v for k, v in metrics.items() if k != "confusion_matrix"},
           "confusion_matrix": metrics["confusion_matrix"]}
    print(f"{args.split}: top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  mean per-class recall "
          f"{metrics['mean_per_class_recall']:.2f}  loss {metrics['loss']:.4f}  (n={metrics['num_samples']}"
          f"{', skipped ' + str(metrics['skipped']) if metrics['skipped'] else ''})")
    if args.json_out:
        from ..io import atomic_write_json
        atomic_write_json(args.json_out, out)
        print(f"metrics written to {args.json_out}")
    return 0
