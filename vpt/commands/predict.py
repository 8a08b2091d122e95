"""``vpt predict ARTIFACT IMAGE_OR_DIR... [--topk 5] [--format json|csv] [--output FILE]``: top-k classes
with names and probabilities, using the backbone's own preprocessing."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from typing import List

from ._common import UserError

_logger = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def register(sub) -> None:
    p = sub.add_parser("predict", help="top-k predictions for images", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact folder (e.g. runs/x/best)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (searched recursively)")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--output", metavar="PATH", help="classification: a file to write instead of stdout; "
                                                   "detection: a folder for PNGs with boxes + detections.json")
    p.add_argument("--score-thresh", type=float, default=None, help="detection: lowest score drawn/kept (default 0.3)")
    p.add_argument("--task", choices=["classification", "detection"], default=None)
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--amp-dtype", default="float32")
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if the artifact's has moved")
    p.set_defaults(func=run)


def collect_images(inputs: List[str]) -> List[str]:
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, dirnames, files in os.walk(item):
                dirnames.sort()
                paths += [os.path.join(dirpath, f) for f in sorted(files)
                          if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"no such file or folder: {item!r}")
    if not paths:
        raise UserError(f"no images found in {inputs}; expected files ending in {', '.join(IMAGE_EXTS)}")
    return paths


def run(args) -> int:
    from .train import recipe_task
    if recipe_task(args) == "detection":
        from ..detection import commands as det
        return int(det.predict(args) or 0)
    import torch

    from .. import from_pretrained
    from ..engine.build import ensure_artifact_type
    from ..data import ImageDataset
    from ..data.transforms import EvalTransform
    from ..engine import predict_logits, resolve_device
    from ..engine.config import amp_dtype_name

    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}")
    device = resolve_device(args.device)
    ensure_artifact_type(args.artifact)
    model = from_pretrained(args.artifact, weights=args.weights, device=device)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    paths = collect_images(args.inputs)
    dataset = ImageDataset([(p, -1) for p in paths], EvalTransform(model.data_config), skip_corrupt=True)
    out = predict_logits(model, dataset, args.batch_size, device, amp_dtype_name(args.amp_dtype))
    probs = out["logits"].softmax(dim=1) if len(out["indices"]) else torch.empty(0)
    k = min(args.topk, len(names))
    by_index = {}
    for row, i in enumerate(out["indices"].tolist()):
        p, c = probs[row].topk(k)
        by_index[i] = [{"rank": r + 1, "label": names[ci], "index": ci, "prob": round(pi, 6)}
                       for r, (pi, ci) in enumerate(zip(p.tolist(), c.tolist()))]
    records = [{"path": path, "predictions": by_index[i]} if i in by_index else
               {"path": path, "error": "unreadable image (skipped)"} for i, path in enumerate(paths)]
    if args.format == "json":
        text = json.dumps(records, indent=2) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "rank", "label", "index", "prob"])
        for rec in records:
            for pred in rec.get("predictions", [{"rank": "", "label": "ERROR: unreadable", "index": "", "prob": ""}]):
                w.writerow([rec["path"], pred["rank"], pred["label"], pred["index"], pred["prob"]])
        text = buf.getvalue()
    if args.output:
        from ..io import atomic_write_text
        atomic_write_text(args.output, text)
        print(f"{len(records)} predictions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
