"""``vpt predict ARTIFACT IMAGE_OR_DIR... [--topk 5] [--format json|csv] [--output FILE]``: top-k classes
with names and probabilities, using the backbone's own preprocessing.

``vpt predict --tasks NAME=ARTIFACT [NAME=ARTIFACT ...] [--assign CSV] [IMAGE_OR_DIR...]``: several
artifacts made for the same backbone, loaded onto ONE backbone; each batch mixes images of different
tasks and runs in one backbone pass. Without --assign every image is predicted under every task;
--assign CSV (header ``path,task``; paths relative to the CSV's folder or absolute; task ``base`` =
plain backbone features) lists the images and the task each one runs under.

An image that can't be read is not a prediction: its row carries "error" instead of "predictions" (CSV:
label "ERROR: ..."), it is named on stderr, and the summary says N predicted, M failed.

exit status:
  0  every input image was predicted
  1  some images were predicted and some could not be read: the output is written, with an error row
     for each failed image (1 is also the status of a write the file system refuses: full disk, read-only)
  2  nothing was predicted and nothing written: a usage error, a missing path, no image found, no input
     readable as an image, or an artifact that is refused (the message says why and what to do)"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from typing import Dict, List, Sequence, Tuple

from ._artifact import add_artifact_flags, check_max_params
from ._common import UserError

_logger = logging.getLogger(__name__)
USAGE = ("%(prog)s [options] ARTIFACT IMAGE_OR_DIR [IMAGE_OR_DIR ...]\n"
         "       %(prog)s [options] --tasks NAME=ARTIFACT [NAME=ARTIFACT ...] IMAGE_OR_DIR [IMAGE_OR_DIR ...]\n"
         "       %(prog)s [options] --tasks NAME=ARTIFACT [NAME=ARTIFACT ...] --assign CSV")
MAX_LISTED = 20  # unreadable files named one per line on stderr; the rest are counted


def register(sub) -> None:
    p = sub.add_parser("predict", help="top-k predictions for images", description=__doc__, usage=USAGE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # both positionals are optional to argparse: --tasks takes no ARTIFACT and may swallow the images after it
    p.add_argument("artifact", metavar="ARTIFACT",
                   help="artifact folder (e.g. runs/x/best) or hub task (hf://ORG/NAME[@REVISION]); not "
                        "given with --tasks").required = False
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files and/or folders (searched recursively)").required = False
    p.add_argument("--tasks", nargs="+", metavar="NAME=ARTIFACT",
                   help="several classifier artifacts for the same backbone, each under a NAME, run on one "
                        "shared backbone")
    p.add_argument("--assign", metavar="CSV", help="with --tasks: a CSV with header 'path,task' naming each "
                                                   "image's task (or 'base'); default: every image under every task")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--output", metavar="PATH", help="classification: a file to write instead of stdout; "
                                                   "detection: a folder for PNGs with boxes + detections.json")
    p.add_argument("--score-thresh", type=float, default=None, help="detection: lowest score drawn/kept (default 0.3)")
    p.add_argument("--task", choices=["classification", "clip", "detection"], default=None,
                   help="what ARTIFACT holds (default: read from the artifact); not to be confused with --tasks")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="images per forward (default: 64; "
                                                                      "detection: 4)")
    p.add_argument("--device", default=None)
    p.add_argument("--amp-dtype", default="float32")
    add_artifact_flags(p)
    p.set_defaults(func=run)


def _check_options(args) -> None:
    """Flag values, checked before any artifact is read or model built."""
    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.score_thresh is not None and not 0.0 <= args.score_thresh <= 1.0:
        raise UserError(f"--score-thresh is a detection score in [0, 1], got {args.score_thresh}")
    check_max_params(args.max_params)
    from ..engine.config import amp_dtype_name
    amp_dtype_name(args.amp_dtype)  # an unknown dtype is a ConfigError naming the choices


def run(args) -> int:
    _check_options(args)
    if getattr(args, "tasks", None):
        return run_multitask(args)
    if getattr(args, "assign", None):
        raise UserError("--assign names tasks loaded with --tasks NAME=ARTIFACT ...; add --tasks or drop --assign")
    if not args.artifact or not args.inputs:
        raise UserError("pass an ARTIFACT folder and at least one IMAGE_OR_DIR "
                        "(or --tasks NAME=ARTIFACT ... IMAGE_OR_DIR... for several artifacts)")
    from ..artifact import Artifact
    from ..data import collect_images
    from ..engine import resolve_device

    artifact = Artifact.open(args.artifact)  # the one read of adapter_config.json
    task = artifact.task
    if args.task:
        from ..tasks import task_for_artifact
        task = task_for_artifact(artifact, args.task).name
    writer = PREDICTORS.get(task)
    if writer is None:
        raise UserError(f"{args.artifact} holds a {artifact.model_type!r} model of task {task!r}, and vpt predict "
                        f"writes predictions of the tasks {', '.join(sorted(PREDICTORS))} only; evaluate it with "
                        f"its task's own tools")
    if task == "detection" and args.format not in (None, "json"):
        raise UserError("detection predictions are written as PNGs plus detections.json; drop --format")
    paths = collect_images(args.inputs)  # a missing path or a folder without images: before any model is built
    device = resolve_device(args.device)
    model = artifact.load(device=device, weights=args.weights, max_params=args.max_params)
    if artifact.revision:
        print(f"vpt predict: {args.artifact} is {artifact.source}", file=sys.stderr)
    return writer(args, model, device, paths)


def predict_classes(args, model, device, paths: List[str]) -> int:
    """Top-k classes per image, as JSON or CSV."""
    import torch

    from ..data import ImageDataset
    from ..data.transforms import EvalTransform
    from ..engine.config import amp_dtype_name
    from ..tasks.evaluation import predict_logits

    names = model.class_names or [str(i) for i in range(model.num_classes)]
    dataset = ImageDataset([(p, -1) for p in paths], EvalTransform(model.data_config), skip_corrupt=True)
    out = predict_logits(model, dataset, args.batch_size or 64, device, amp_dtype_name(args.amp_dtype))
    probs = out["logits"].softmax(dim=1) if len(out["indices"]) else torch.empty(0)
    k = min(args.topk, len(names))
    by_index = {}
    for row, i in enumerate(out["indices"].tolist()):
        p, c = probs[row].topk(k)
        by_index[i] = [{"rank": r + 1, "label": names[ci], "index": ci, "prob": round(pi, 6)}
                       for r, (pi, ci) in enumerate(zip(p.tolist(), c.tolist()))]
    records = [{"path": path, "predictions": by_index[i]} if i in by_index else
               {"path": path, "error": image_error(path)} for i, path in enumerate(paths)]
    if getattr(model, "revision", None):  # a hub task: the commit its files came from
        for rec in records:
            rec["artifact"] = model.name_or_path
    return finish(args, records)


def image_error(path: str) -> str:
    """Why ``path`` could not be read as an image (re-read in this process: the loader only skipped it)."""
    from ..data.dataset import BAD_IMAGE_ERRORS, load_image
    try:
        load_image(path)
    except BAD_IMAGE_ERRORS as e:
        return f"not a readable image ({type(e).__name__}: {str(e)[:200]})"
    return "not a readable image"


def count(records: Sequence[dict]) -> Tuple[int, List[Tuple[str, str]]]:
    """(images predicted, [(path, error)] of the images that failed): an image counts once, whatever the
    number of tasks it ran under (--tasks), and an error row is never a prediction."""
    failed: Dict[str, str] = {}
    for r in records:
        if "error" in r:
            failed.setdefault(r["path"], r["error"])
    return len({r["path"] for r in records} - set(failed)), list(failed.items())


def report(predicted: int, failed: List[Tuple[str, str]], where: str = "") -> int:
    """Name the failed files on stderr, then refuse (nothing predicted: exit 2) or summarise (exit 0 / 1)."""
    for path, error in failed[:MAX_LISTED]:
        print(f"vpt predict: {path}: {error}", file=sys.stderr)
    if len(failed) > MAX_LISTED:
        print(f"vpt predict: ... and {len(failed) - MAX_LISTED} more unreadable files", file=sys.stderr)
    if not predicted:
        raise UserError(f"none of the {len(failed)} input(s) could be read as an image (see above); nothing was "
                        f"written. Pass image files or folders of them (PNG, JPEG, ...)")
    if failed or where:
        print(f"vpt predict: {predicted} image(s) predicted, {len(failed)} failed{where}", file=sys.stderr)
    return 1 if failed else 0


def finish(args, records: List[dict]) -> int:
    """Write the records (unless nothing was predicted) and return the exit status (module docstring)."""
    predicted, failed = count(records)
    if predicted:
        _emit(args, render(records, args.format))
    return report(predicted, failed, f" -> {args.output}" if args.output else "")


def predict_boxes(args, model, device, paths: List[str]) -> int:
    """Detections per image: PNGs with the boxes drawn and one detections.json, in --output."""
    from ..detection.predict import predict_images
    out = args.output or "predictions"
    res = predict_images(model, paths, out, device,
                         score_thresh=args.score_thresh if args.score_thresh is not None else 0.3,
                         batch_size=args.batch_size or 4)
    failed = [(e["file"], e["error"]) for e in res["errors"]]
    if res["images"]:
        n = sum(len(im["detections"]) for im in res["images"])
        print(f"{n} detections in {len(res['images'])} images -> {out}/ (PNGs with boxes, detections.json)")
    return report(len(res["images"]), failed)


# task (the artifact's, vpt.Artifact.task) -> how its predictions are written
PREDICTORS = {"classification": predict_classes, "clip": predict_classes, "detection": predict_boxes}


def render(records: List[Dict], fmt: str) -> str:
    """Prediction records as JSON, or as CSV with one row per (image[, task], rank); a 'task' column when the
    records carry one (--tasks)."""
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    keys = ["path"] + (["task"] if records and "task" in records[0] else [])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys + ["rank", "label", "index", "prob"])
    for rec in records:
        if "features_dim" in rec:
            preds = [{"rank": "", "label": f"features (dim {rec['features_dim']})", "index": "", "prob": ""}]
        else:
            preds = rec.get("predictions", [{"rank": "", "label": "ERROR: unreadable", "index": "", "prob": ""}])
        for pred in preds:
            w.writerow([rec[k] for k in keys] + [pred["rank"], pred["label"], pred["index"], pred["prob"]])
    return buf.getvalue()


def _emit(args, text: str) -> None:
    if args.output:
        from ..io import atomic_write_text
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)


# --- several tasks on one backbone -----------------------------------------------------------------
def _is_pair(item: str) -> bool:
    name = item.split("=", 1)[0]
    return "=" in item and "/" not in name and os.sep not in name and not os.path.exists(item)


def _is_artifact(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def parse_tasks(items: Sequence[str], paths: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """``--tasks`` values + positionals -> ({name: artifact dir}, image inputs). argparse hands --tasks the
    images that follow it too: the NAME=ARTIFACT pairs are picked out, the rest are inputs."""
    from ..multitask import BASE
    if not _is_pair(items[0]):
        raise UserError(f"--tasks expects NAME=ARTIFACT pairs, got {items[0]!r}; write e.g. "
                        f"{os.path.basename(os.path.normpath(items[0])) or 'task'}={items[0]}")
    tasks: Dict[str, str] = {}
    inputs: List[str] = []
    for item in items:
        if not _is_pair(item):
            inputs.append(item)
            continue
        name, path = (s.strip() for s in item.split("=", 1))
        if not name or not path:
            raise UserError(f"--tasks {item!r}: both NAME and ARTIFACT are needed (NAME=ARTIFACT)")
        if name == BASE:
            raise UserError(f"--tasks {item!r}: '{BASE}' is reserved for the plain backbone; pick another NAME")
        if name in tasks:
            raise UserError(f"--tasks: duplicate task name {name!r} ({tasks[name]} and {path}); give each "
                            f"artifact its own NAME")
        tasks[name] = path
    inputs += list(paths)
    for item in inputs:
        if _is_artifact(item):
            raise UserError(f"{item!r} is an artifact folder, not images; with --tasks name every artifact as "
                            f"NAME=ARTIFACT (e.g. {os.path.basename(os.path.normpath(item))}={item})")
    return tasks, inputs


def read_assign(path: str, known: Sequence[str]) -> List[Tuple[str, str]]:
    """``--assign`` CSV -> [(image path, task)] in file order; every problem is a one-line UserError."""
    from ..multitask import BASE
    if not os.path.isfile(path):
        raise UserError(f"--assign file not found: {path!r}; pass a CSV with header 'path,task'")
    root = os.path.dirname(path)
    rows: List[Tuple[str, str, int]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header] != ["path", "task"]:
                raise UserError(f"--assign {path}: the first line must be the header 'path,task', got "
                                f"{','.join(header or [])!r}")
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise UserError(f"--assign {path} line {reader.line_num}: expected 'path,task', got "
                                    f"{','.join(row)!r}")
                rows.append((row[0].strip(), row[1].strip(), reader.line_num))
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"--assign {path} is not a readable CSV ({e}); write UTF-8 text with header 'path,task'") from None
    if not rows:
        raise UserError(f"--assign {path} lists no images; add rows 'path,task' below the header")
    unknown = [(t, n) for _, t, n in rows if t != BASE and t not in known]
    if unknown:
        where = ", ".join(f"{t!r} (line {n})" for t, n in unknown[:3])
        raise UserError(f"--assign {path}: unknown task {where}; loaded tasks: {', '.join(known)} (or '{BASE}' "
                        f"for plain backbone features)")
    jobs = [(p if os.path.isabs(p) else os.path.join(root, p), t) for p, t, _ in rows]
    missing = [(p, n) for (p, _), (_, _, n) in zip(jobs, rows) if not os.path.isfile(p)]
    if missing:
        where = ", ".join(f"{p!r} (line {n})" for p, n in missing[:3])
        raise UserError(f"--assign {path}: {len(missing)} listed image(s) not found: {where}"
                        f"{' ...' if len(missing) > 3 else ''}; paths are relative to the CSV's folder "
                        f"({root or '.'}) or absolute")
    return jobs


def load_tasks(tasks: Dict[str, str], weights, device, max_params: int):
    """``MultiTaskModel.from_pretrained``: each artifact read once, all on the first one's backbone; its
    errors name the task (NAME=ARTIFACT) and the fix."""
    from ..errors import ArtifactError
    from ..multitask import MultiTaskModel
    try:
        return MultiTaskModel.from_pretrained(tasks, weights=weights, device=device, max_params=max_params)
    except ArtifactError as e:
        raise UserError(f"--tasks {e}") from None


def _pack(counts: Sequence[int], batch_size: int) -> List[List[int]]:
    """Consecutive images per batch so that their task runs add up to at most ``batch_size`` (>= 1 image)."""
    batches: List[List[int]] = []
    cur: List[int] = []
    n = 0
    for i, c in enumerate(counts):
        if cur and n + c > batch_size:
            batches.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += c
    return batches + [cur] if cur else batches


def run_multitask(args) -> int:
    """``--tasks``: one shared backbone, per-sample prompts and heads, one backbone pass per batch."""
    import torch

    from ..data import ImageDataset, collate, collect_images
    from ..data.transforms import EvalTransform
    from ..engine import resolve_device
    from ..engine.build import autocast
    from ..engine.config import amp_dtype_name
    from ..multitask import BASE

    if getattr(args, "task", None) == "detection":
        raise UserError("--tasks combines classifiers; drop --task detection")
    batch_size = 64 if args.batch_size is None else args.batch_size
    amp = amp_dtype_name(args.amp_dtype)
    tasks, inputs = parse_tasks(args.tasks, ([args.artifact] if args.artifact else []) + list(args.inputs or []))
    if args.assign:
        if inputs:
            raise UserError(f"--assign {args.assign} lists the images itself; drop {inputs[0]!r} (or drop --assign "
                            f"to predict every image under every task)")
        jobs = read_assign(args.assign, list(tasks))
    else:
        if not inputs:
            raise UserError("pass IMAGE_OR_DIR... after the NAME=ARTIFACT pairs, or --assign CSV")
        jobs = [(p, t) for p in collect_images(inputs) for t in tasks]
    device = resolve_device(args.device)
    model = load_tasks(tasks, args.weights, device, max_params=args.max_params)
    first = model.tasks[next(iter(tasks))]

    images: List[str] = []
    runs: Dict[str, List[int]] = {}  # image path -> its jobs: each image is read once, run once per task
    for j, (path, _) in enumerate(jobs):
        if path not in runs:
            images.append(path)
            runs[path] = []
        runs[path].append(j)
    dataset = ImageDataset([(p, -1) for p in images], EvalTransform(first.data_config), skip_corrupt=True)
    batches = _pack([len(runs[p]) for p in images], batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=0, collate_fn=collate)
    outputs: Dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for x, _, idx, _ in loader:
            if x is None:
                continue
            rows, job_ids = [], []
            for r, i in enumerate(idx.tolist()):
                rows += [r] * len(runs[images[i]])
                job_ids += runs[images[i]]
            with autocast(device, amp):
                outs = model(x.to(device)[torch.tensor(rows, device=device)], [jobs[j][1] for j in job_ids])
            outputs.update({j: o.float().cpu() for j, o in zip(job_ids, outs)})

    records = []
    for j, (path, task) in enumerate(jobs):
        rec = {"path": path, "task": task}
        m = model.tasks[task] if task != BASE else None
        if m is not None and getattr(m, "revision", None):
            rec["artifact"] = m.name_or_path  # a hub task: the commit its files came from
        if j not in outputs:
            rec["error"] = image_error(path)
        elif m is None or not m.num_classes:
            rec["features_dim"] = int(outputs[j].numel())  # 'base' (or a head-less task): pooled features
        else:
            names = m.class_names or [str(i) for i in range(m.num_classes)]
            p, c = outputs[j].softmax(dim=-1).topk(min(args.topk, len(names)))
            rec["predictions"] = [{"rank": r + 1, "label": names[ci], "index": ci, "prob": round(pi, 6)}
                                  for r, (pi, ci) in enumerate(zip(p.tolist(), c.tolist()))]
        records.append(rec)
    return finish(args, records)
