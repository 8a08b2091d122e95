"""The CLIP prompt-learning protocols (CoOp / CoCoOp / MaPLe / PromptSRC papers), as small functions the
CLI (or a task) calls:

- base-to-novel: train on the base half of the sorted class names (``data.classes: base``), then evaluate
  the learned prompts on the base and the novel half's test images; report base, novel and their
  harmonic mean HM = 2 b n / (b + n);
- few-shot: k in {1, 2, 4, 8, 16} training images per class, several seeds (``data.shots``, ``train.seed``,
  ``data.split_seed``), one run folder each;
- cross-dataset: the prompts learned on one folder evaluated on others' classes (``for_classes``);
- a summary table over a set of run folders / evaluation files (mean and std over seeds).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import ConfigError

FEW_SHOTS = (1, 2, 4, 8, 16)


def harmonic_mean(base: float, novel: float) -> float:
    """HM of base and novel accuracy (0 when both are 0)."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def check_transferable(section: Any) -> None:
    """Base-to-novel and cross-dataset evaluate prompts on classes they never saw: the classifier must
    come from the text side. ``section`` is a run config's model section."""
    if section.type != "clip":
        raise ConfigError(f"base-to-novel / cross-dataset need a CLIP model (model.type: clip): only a classifier "
                          f"computed from class names transfers to unseen classes; got model.type {section.type!r}")
    head_kind = section.head if isinstance(section.head, str) else getattr(section.head, "kind", "zeroshot")
    text = section.text  # a typed config (vpt.config resolved it when the recipe was loaded) or None
    if text is not None and text.class_specific:
        raise ConfigError("a class-specific context (model.text.class_specific: true) has one context per trained "
                          "class and does not transfer to unseen classes; set it to false")
    if text is None and head_kind != "zeroshot":
        raise ConfigError(f"head.kind {head_kind!r} learns one weight row per trained class and does not "
                          f"transfer to unseen classes; use a text prompt (model.text) or head.kind zeroshot")


def evaluate_classes(model: Any, data: Any, classes: str, split: str, train: Any, device: Any,
                     dist_info: Any = None) -> Dict[str, Any]:
    """Evaluate ``model``'s learned prompts on ``classes`` (all | base | novel) of ``data`` (a run config's
    data section): the text side is rebuilt for that folder's class names when they differ. Under DDP
    every rank calls it (``dist_info``) and gets the same metrics."""
    from ..data import DataError, EvalTransform, ImageDataset, load_splits
    from .classification import evaluate
    splits = load_splits(data.root, data.val_fraction, data.test_fraction, data.split_seed, None, data.extensions,
                         classes=classes)
    samples = (splits.train + splits.val + splits.test) if split == "all" else getattr(splits, split)
    if not samples:
        raise DataError(f"{data.root!r} has no {split} images of its {classes} classes ({splits.summary()}); add "
                        f"{data.root}/{split}/<class>/ folders or set data.test_fraction")
    if list(model.class_names or []) != splits.class_names:
        model = model.for_classes(splits.class_names)
    dataset = ImageDataset(samples, EvalTransform(model.data_config), skip_corrupt=data.skip_corrupt)
    metrics = evaluate(model, dataset, splits.class_names, train.eval_batch_size, device, train.amp_dtype,
                       dist_info, workers=train.workers)
    metrics["classes"] = splits.class_names
    return metrics


def brief(metrics: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("num_samples", "top1", "top5", "mean_per_class_recall", "loss", "classes")
    return {k: metrics[k] for k in keys if k in metrics}


def base_to_novel(model: Any, data: Any, train: Any, device: Any, split: str = "test",
                  base_metrics: Optional[Dict[str, Any]] = None, dist_info: Any = None) -> Dict[str, Any]:
    """{'base', 'novel', 'hm'} top-1 (+ the two evaluations) of a model trained on the base classes."""
    base = base_metrics or evaluate_classes(model, data, "base", split, train, device, dist_info)
    novel = evaluate_classes(model, data, "novel", split, train, device, dist_info)
    b, n = float(base["top1"]), float(novel["top1"])
    base_brief = brief(base)
    base_brief.setdefault("classes", list(getattr(model, "class_names", None) or []))
    return {"base": b, "novel": n, "hm": harmonic_mean(b, n),
            "base_to_novel": {"split": split, "base": base_brief, "novel": brief(novel)}}


def check_shots(shots: Sequence[int]) -> List[int]:
    out = sorted(set(int(k) for k in shots))
    if not out or any(k < 1 for k in out):
        raise ConfigError(f"shots must be positive integers (the papers use {', '.join(map(str, FEW_SHOTS))}), "
                          f"got {list(shots)}")
    return out


def few_shot_runs(shots: Sequence[int], seeds: Sequence[int]) -> List[Tuple[int, int, str]]:
    """(k, seed, sub-folder name) for every run of a few-shot grid."""
    return [(k, s, f"shots{k}_seed{s}") for k in check_shots(shots) for s in sorted(set(int(x) for x in seeds))]


# --- the summary table ------------------------------------------------------------------------------
def _find_results(paths: Iterable[str]) -> List[str]:
    out: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            for dirpath, _, files in sorted(os.walk(p)):
                out += [os.path.join(dirpath, f) for f in sorted(files)
                        if f == "results.json" or (f.endswith(".json") and f.startswith("eval"))]
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"{p!r} is neither a run folder nor a results file")
    return out


def _method(config: Dict[str, Any]) -> str:
    model = config.get("model") or {}
    text, prompt = model.get("text"), model.get("prompt")
    parts = []
    if text:
        parts.append(str(text.get("kind", "coop")))
    if prompt:
        parts.append(str(prompt.get("kind")))
    if not parts:
        head = model.get("head") or {}
        parts.append(f"{head.get('kind', 'zeroshot') if isinstance(head, dict) else head} head")
    return "+".join(parts)


def result_rows(path: str) -> List[Dict[str, Any]]:
    """Rows from a ``vpt train`` results.json or a ``vpt eval --json`` file (one per transfer target);
    [] for other JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(r, dict):
        return []
    name = os.path.basename
    if isinstance(r.get("config"), dict):  # vpt train
        cfg = r["config"]
        data = cfg.get("data") or {}
        rows = [{"method": _method(cfg), "data": name(str(data.get("root", "")).rstrip("/")),
                 "eval": "train run", "shots": data.get("shots"), "seed": (cfg.get("train") or {}).get("seed"),
                 "top1": (r.get("test") or {}).get("top1")}]
    elif "artifact" in r:  # vpt eval
        method = _artifact_method(str(r["artifact"]))
        if isinstance(r.get("transfer"), dict):
            rows = [{"method": method, "data": name(str(root).rstrip("/")), "eval": "transfer", "top1": m.get("top1")}
                    for root, m in sorted(r["transfer"].items())]
        else:
            rows = [{"method": method, "data": name(str(r.get("data", "")).rstrip("/")),
                     "eval": "base-to-novel" if "hm" in r else "eval", "top1": r.get("top1")}]
    else:
        return []
    for row in rows:
        row.setdefault("shots", None)
        for k in ("base", "novel", "hm"):
            row.setdefault(k, r.get(k))
        row["path"] = path
    return rows


def _artifact_method(artifact: str) -> str:
    try:
        with open(os.path.join(artifact, "adapter_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        return _method({"model": cfg})
    except (OSError, ValueError, AttributeError):
        return name_of(artifact)


def name_of(path: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def _mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def summary_table(paths: Iterable[str]) -> Tuple[List[str], List[List[str]]]:
    """(header, rows): one row per (method, data, kind of evaluation, shots), mean ± std over seeds of top-1 /
    base / novel / HM. "train run": the run's own test split (the base classes in a base-to-novel run)."""
    groups: Dict[Tuple[str, str, str, Any], List[Dict[str, Any]]] = {}
    for p in _find_results(paths):
        for row in result_rows(p):
            groups.setdefault((row["method"], row["data"], row["eval"], row["shots"]), []).append(row)
    if not groups:
        raise FileNotFoundError("no results found: give run folders (with results.json) or `vpt eval --json` files")
    header = ["method", "data", "eval", "shots", "runs", "top-1", "base", "novel", "HM"]
    rows = []
    for (method, data, kind, shots), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        cols = [_mean_std([float(r[k]) for r in rs if r.get(k) is not None]) for k in ("top1", "base", "novel", "hm")]
        rows.append([method, data, kind, "all" if shots is None else str(shots), str(len(rs))] + cols)
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"

