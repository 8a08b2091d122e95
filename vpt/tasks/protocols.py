"""The CLIP prompt-learning protocols (CoOp / CoCoOp / MaPLe / PromptSRC papers), as small functions the
CLI (or a task) calls:

- base-to-novel: train on the base half of the sorted class names (``data.classes: base``), then evaluate
  the learned prompts on the base and the novel half's test images; report base, novel and their
  harmonic mean HM = 2 b n / (b + n);
- few-shot: k in {1, 2, 4, 8, 16} training images per class, several seeds (``data.shots``, ``train.seed``,
  ``data.split_seed``), one run folder each;
- cross-dataset: the prompts learned on one folder evaluated on others' classes (``for_classes``).

The summary table over run folders and evaluation files (``vpt summarize``) is ``vpt.tasks.summary``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

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
    from .evaluation import evaluate
    splits = load_splits(data.root, data.val_fraction, data.test_fraction, data.split_seed, None, data.extensions,
                         classes=classes, format=getattr(data, "format", "auto"),
                         benchmark_split=getattr(data, "benchmark_split", "final"))
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
