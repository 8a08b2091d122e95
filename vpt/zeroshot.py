"""CLIP zero-shot classification: prompt templates, the text classifier, evaluation, a disk cache.

The text classifier is built with open_clip's own ``build_zero_shot_classifier`` (class names x templates
through the frozen text tower, averaged per class, L2-normalised). Metrics follow LAION's CLIP_benchmark
(``clip_benchmark/metrics/zeroshot_classification.py``): ``acc1``, ``acc5`` (NaN below 5 classes) and
``mean_per_class_recall`` (balanced accuracy), and :func:`benchmark_record` writes its JSON shape. One
difference: a metric that is undefined (top-5 below 5 classes, the recall of a class without images) is
``None`` with a reason (:func:`undefined_metrics`), never NaN, so the JSON is strict (RFC 8259).

Images are read with vpt's own data loading (``vpt.data``): the folder layouts and CSVs of ``vpt train``,
its split folders (``root/{train,val,test}/<class>/``: :data:`ZS_SPLITS`), and an unreadable file is
skipped and counted, never a traceback.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .config import Checked, ConfigError, option

_logger = logging.getLogger(__name__)


@dataclass
class ZeroShotConfig(Checked):
    """A `vpt zeroshot` run (vpt/recipes/zeroshot_*.yaml, e.g. -c zeroshot_vit_b32; flags override the file)."""
    model: Optional[str] = None  # open_clip:ARCH/TAG (hub), open_clip:ARCH/FILE (local file) or open_clip:ARCH
    weights: Optional[str] = None  # local weights file for ARCH (safetensors or torch state dict)
    pretrained: bool = True  # False: random init (smoke tests; chance-level accuracy)
    init_seed: int = 0  # seed of the random init when pretrained is False
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to open_clip.create_model
    data: Optional[str] = None  # image folder DIR/<class>/* or DIR/{train,val,test}/<class>/*, or a CSV (as vpt train)
    split: Optional[str] = None  # all | train | val | test; None: test when the data has a test split, else all
    classnames: Optional[str] = None  # file of class names (sorted folder order); None: folder names, _ -> space
    templates: Union[str, List[str]] = "openai"  # openai | simple | a file of '{c}' lines | a list of '{c}' strings
    batch_size: int = option(64, "images per forward", range=(1, None))
    classes_per_batch: int = option(10, "classes per text-encoder forward when building the classifier",
                                    range=(1, 100_000))
    workers: int = option(0, "DataLoader worker processes", range=(0, None))
    device: Optional[str] = None  # cpu | cuda | cuda:N; None: cuda if available
    cache: bool = True  # cache the text classifier on disk (keyed by model, weights, classes, templates)
    cache_dir: Optional[str] = None  # None: $VPT_CACHE_DIR/zeroshot or ~/.cache/vpt/zeroshot
    dataset: Optional[str] = None  # dataset name in the result JSON; None: the folder's name


ZS_SPLITS = ("all", "train", "val", "test")  # which images of the data are evaluated ('all': every split)
TEMPLATE_SETS = ("openai", "simple", "promptsrc60")  # open_clip.zero_shot_metadata OPENAI_ / SIMPLE_IMAGENET_TEMPLATES;
# promptsrc60: the 60 of PromptSRC's code (trainers/imagenet_templates.py): OpenAI's first 60, its 40th first
CACHE_VERSION = 1  # bump when the cached classifier's meaning changes


def import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise ImportError("CLIP zero-shot and text context need open_clip_torch: pip install 'vpt[clip]'") from None
    return open_clip


# --- templates and class names ----------------------------------------------------------------------
def check_template(template: str, where: str = "template") -> str:
    """A template is a ``str.format`` string whose only field is ``{c}`` (CLIP_benchmark's convention)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{where} {template!r} is not a valid format string ({e}); "
                          f"escape literal braces as {{{{ }}}}") from None
    if "c" not in fields:
        raise ConfigError(f"{where} {template!r} has no '{{c}}' where the class name goes; "
                          f"write e.g. 'a photo of a {{c}}.'")
    other = sorted(set(fields) - {"c"})
    if other:
        raise ConfigError(f"{where} {template!r} has fields {other} besides {{c}}; only {{c}} is filled in")
    return template


def load_templates(spec: Union[str, Sequence[str]]) -> List[str]:
    """``'openai'`` | ``'simple'`` (open_clip's ImageNet sets) | a file with one ``{c}`` template per line
    (blank lines and ``#`` comments skipped) | a list of template strings -> list of ``{c}`` strings."""
    if not isinstance(spec, str):
        out = [check_template(str(t), f"template {i + 1}") for i, t in enumerate(spec)]
        if not out:
            raise ConfigError("the template list is empty; give at least one '{c}' template")
        return out
    if spec in TEMPLATE_SETS:
        meta = import_open_clip().zero_shot_metadata
        fns = meta.SIMPLE_IMAGENET_TEMPLATES if spec == "simple" else meta.OPENAI_IMAGENET_TEMPLATES
        if spec == "promptsrc60":
            fns = [fns[39]] + list(fns[:39]) + list(fns[40:60])
        return [fn("{c}") for fn in fns]  # open_clip's lambdas -> '{c}' strings
    if not os.path.isfile(spec):
        from .registry import did_you_mean
        raise ConfigError(f"templates {spec!r} is neither a template set ({', '.join(TEMPLATE_SETS)}) nor a file"
                          f"{did_you_mean(spec, TEMPLATE_SETS)}; a file holds one '{{c}}' template per line")
    out = []
    with open(spec, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(check_template(line, f"{spec} line {n}:"))
    if not out:
        raise ConfigError(f"template file {spec!r} holds no templates; write one '{{c}}' template per line")
    return out


def prompt_name(class_name: str) -> str:
    """Folder name -> the words a prompt uses (underscores to spaces, as CLIP_benchmark does)."""
    return str(class_name).replace("_", " ")


def folder_classes(root: str) -> List[str]:
    """Class folders of ``root/<class>/*`` in torchvision ImageFolder's (sorted) label order."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root!r}; pass a folder laid out as root/<class>/*.jpg")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ConfigError(f"{root!r} has no class sub-folders; lay images out as root/<class>/*.jpg")
    return classes


def read_class_names(path: str, expected: Optional[int] = None) -> List[str]:
    """One class name per line, in the label order of the folders (sorted folder names)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class names file not found: {path!r}")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if expected is not None and len(names) != expected:
        raise ConfigError(f"{path!r} has {len(names)} class names but the data has {expected} class folders; "
                          f"write one name per folder, in sorted folder order")
    return names


# --- the text classifier ----------------------------------------------------------------------------
def clip_tokenizer(adapter) -> Callable:
    """open_clip's tokenizer for the adapter's architecture, at the text tower's context length."""
    open_clip = import_open_clip()
    ctx = getattr(adapter.model, "context_length", None)
    try:
        return open_clip.get_tokenizer(adapter.arch, context_length=ctx)
    except Exception as e:  # HF tokenizers need the hub
        raise ConfigError(f"cannot build the tokenizer of open_clip '{adapter.arch}' ({e}); models with a "
                          f"Hugging Face text tower need its tokenizer in the local HF cache") from None


def cache_key(adapter, class_names: Sequence[str], templates: Sequence[str]) -> Dict[str, Any]:
    """What the cached classifier depends on: model, weights, classes and templates."""
    ident = adapter.identity()
    return {"version": CACHE_VERSION, "library": ident["library"], "arch": ident["arch"],
            "weights_id": ident["weights_id"], "model_kwargs": ident["model_kwargs"],
            "open_clip": getattr(import_open_clip(), "__version__", "?"),
            "class_names": list(class_names), "templates": list(templates)}


def _cache_path(cache_dir: str, key: Dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return os.path.join(cache_dir, f"textclf-{digest[:40]}.safetensors")


def _load_cached(path: str, key: Dict[str, Any]) -> Optional[torch.Tensor]:
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            if json.loads((f.metadata() or {}).get("key", "null")) != key:
                return None
            return f.get_tensor("classifier")
    except Exception as e:  # a corrupt cache entry is rebuilt, never trusted
        _logger.warning("ignoring unreadable zero-shot cache %s (%s)", path, e)
        return None


def text_classifier(adapter, class_names: Sequence[str], templates: Sequence[str], tokenizer=None,
                    device: Union[str, torch.device, None] = None, classes_per_batch: int = 10,
                    cache_dir: Optional[str] = None) -> torch.Tensor:
    """(C, D) unit-norm class embeddings: mean over templates of the normalised text embeddings.

    ``class_names`` are the words put in the templates; ``templates`` are ``{c}`` strings. With
    ``cache_dir``, the result is stored there keyed by model + weights + classes + templates.
    """
    open_clip = import_open_clip()
    templates = [check_template(t) for t in templates]
    names = [str(c) for c in class_names]
    key = cache_key(adapter, names, templates) if cache_dir else None
    if key is not None:
        path = _cache_path(cache_dir, key)
        if os.path.isfile(path):
            cached = _load_cached(path, key)
            if cached is not None:
                _logger.info("zero-shot classifier from cache %s", path)
                return cached.to(device) if device is not None else cached
    device = device if device is not None else next(adapter.parameters()).device
    tokenizer = tokenizer or clip_tokenizer(adapter)
    fns = [lambda c, t=t: t.format(c=c) for t in templates]  # '{c}' is a named field; open_clip formats positionally
    _logger.info("building the zero-shot classifier: %d classes x %d templates", len(names), len(templates))
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(adapter.model, tokenizer, names, fns,
                                                       num_classes_per_batch=classes_per_batch, device=device)
    clf = weights.T.contiguous().float()  # (D, C) -> (C, D)
    if key is not None:
        from safetensors.torch import save_file

        from .io import atomic_write
        atomic_write(path, lambda tmp: save_file({"classifier": clf.cpu()}, tmp,
                                                 metadata={"key": json.dumps(key, sort_keys=True)}))
    return clf


# --- evaluation -------------------------------------------------------------------------------------
def clip_preprocess(adapter) -> Callable:
    """The model's own evaluation transform (open_clip ``image_transform`` with its preprocess config)."""
    open_clip = import_open_clip()
    cfg = dict(getattr(adapter.model.visual, "preprocess_cfg", None) or {})
    dc = adapter.data_config()
    return open_clip.image_transform(cfg.get("size", dc.input_size[1:]), is_train=False, mean=cfg.get("mean", dc.mean),
                                     std=cfg.get("std", dc.std), resize_mode=cfg.get("resize_mode"),
                                     interpolation=cfg.get("interpolation"), fill_color=cfg.get("fill_color", 0))


@torch.no_grad()
def predict(encode_image: Callable[[torch.Tensor], torch.Tensor], classifier: torch.Tensor, loader,
            device: Union[str, torch.device] = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), targets (N,)): ``100 * normalize(encode_image(x)) @ classifier.T`` (CLIP_benchmark).

    ``loader`` yields ``(x, y)`` or ``vpt.data.collate``'s ``(x or None, y, indices, skipped)``; batches
    whose images were all unreadable (``x is None``) are passed over."""
    logits, targets = [], []
    clf = classifier.to(device)
    for batch in loader:
        x, y = batch[0], batch[1]
        if x is None:
            continue
        feats = F.normalize(encode_image(x.to(device)).float(), dim=-1)  # (B, D)
        logits.append((100.0 * feats @ clf.T).cpu())  # (B, C)
        targets.append(torch.as_tensor(y))
    if not logits:
        return torch.empty(0, classifier.shape[0]), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor,
                           class_names: Sequence[str]) -> Tuple[Dict[str, Optional[float]], List[Dict[str, Any]]]:
    """CLIP_benchmark's metrics plus a per-class table [{class, n, correct, recall}]; an undefined value
    (``acc5`` below 5 classes, ``recall`` of a class without images) is None (CLIP_benchmark: NaN)."""
    n, C = logits.shape
    if n == 0:
        raise ConfigError("no images to evaluate; check the data folder")
    pred = logits.argmax(dim=1)
    top = logits.topk(min(5, C), dim=1).indices  # (N, k)
    acc1 = (pred == targets).double().mean().item()
    acc5 = (top == targets[:, None]).any(dim=1).double().mean().item() if C >= 5 else None
    rows, recalls = [], []
    for c, name in enumerate(class_names):
        mask = targets == c
        count, correct = int(mask.sum()), int((pred[mask] == c).sum())
        recall = correct / count if count else None
        if count:
            recalls.append(recall)
        rows.append({"class": name, "n": count, "correct": correct, "recall": recall})
    metrics = {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": sum(recalls) / len(recalls)}
    return metrics, rows


def undefined_metrics(metrics: Dict[str, Optional[float]], per_class: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """{metric: why it is None} for the metrics :func:`classification_metrics` left undefined."""
    out = {}
    if metrics.get("acc5") is None:
        out["acc5"] = (f"top-5 accuracy needs at least 5 classes; the data has {len(per_class)} "
                       f"(CLIP_benchmark writes NaN here)")
    empty = [r["class"] for r in per_class if not r["n"]]
    if empty:
        out["per_class_recall"] = (f"{len(empty)} class(es) have no readable images in the evaluated split, so their "
                                   f"recall is undefined and left out of mean_per_class_recall: {', '.join(empty[:5])}"
                                   f"{' ...' if len(empty) > 5 else ''}")
    return out


def benchmark_record(dataset: str, model: str, pretrained: str, metrics: Dict[str, Optional[float]],
                     **extra: Any) -> Dict[str, Any]:
    """The JSON object CLIP_benchmark writes for a zero-shot classification run (``extra`` keys after it:
    vpt's ``split``, image counts, ``undefined_metrics``)."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": "zeroshot_classification",
            "metrics": dict(metrics), "language": "en", **extra}


def format_table(rows: List[Dict[str, Any]]) -> str:
    width = max([len("class")] + [len(r["class"]) for r in rows])
    lines = [f"{'class':<{width}}  {'n':>6}  {'correct':>7}  {'recall':>7}"]
    for r in rows:
        rec = "   n/a" if r["recall"] is None else f"{r['recall']:7.4f}"
        lines.append(f"{r['class']:<{width}}  {r['n']:>6d}  {r['correct']:>7d}  {rec:>7}")
    return "\n".join(lines)


class _Preprocess:
    """open_clip's transform in ``vpt.data.ImageDataset``'s ``transform(img, seed)`` form (no randomness)."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, img, seed: int = 0) -> torch.Tensor:
        return self.transform(img)


def zero_shot_samples(root: str, split: Optional[str] = None,
                      extensions: Optional[Sequence[str]] = None) -> Tuple[List[str], List[Tuple[str, int]], str, str]:
    """The labelled images of ``root`` that zero-shot evaluates, found as ``vpt train`` finds them.

    ``root``: ``root/<class>/*``, ``root/{train,val,test}/<class>/*`` or a CSV of ``path,label[,split]``.
    ``split``: one of :data:`ZS_SPLITS`; None takes the test split when the data has one, else all images
    (nothing is carved out: zero-shot trains nothing). Returns (class folder names, samples, split, summary).
    """
    from .data import IMAGE_EXTENSIONS, DataError, load_splits
    if split is not None and split not in ZS_SPLITS:
        from .registry import did_you_mean
        raise DataError(f"unknown split {split!r}; available: {', '.join(ZS_SPLITS)}{did_you_mean(split, ZS_SPLITS)}")
    if not (os.path.isdir(root) or (os.path.isfile(root) and root.lower().endswith(".csv"))):
        raise DataError(f"--data {root!r} is neither an image folder nor a CSV file; pass a folder laid out as "
                        f"DIR/<class>/*.jpg (or DIR/{{train,val,test}}/<class>/*.jpg) or a CSV of path,label")
    splits = load_splits(root, val_fraction=0.0, test_fraction=0.0, extensions=extensions or IMAGE_EXTENSIONS,
                         check_readable=False)
    if split is None:
        split = "test" if splits.test else "all"
    if split == "all":
        samples = sorted(splits.train + splits.val + splits.test)
    else:
        samples = getattr(splits, split)
        if not samples:
            present = [s for s in ("train", "val", "test") if getattr(splits, s)]
            raise DataError(f"{root!r} has no {split} split ({splits.summary()}); choose --split all or one of "
                            f"{', '.join(present)}, or lay the folder out as {root}/{split}/<class>/*")
    return splits.class_names, samples, split, splits.summary()


def evaluate_folder(adapter, root: str, class_names: Optional[Sequence[str]] = None,
                    templates: Union[str, Sequence[str]] = "openai", batch_size: int = 64, workers: int = 0,
                    device: Union[str, torch.device] = "cpu", cache_dir: Optional[str] = None,
                    classes_per_batch: int = 10, encode_image: Optional[Callable] = None,
                    split: Optional[str] = None) -> Dict[str, Any]:
    """Zero-shot evaluation of an open_clip adapter on an image folder (or CSV) with the model's preprocessing.

    ``class_names``: the words for the prompts, one per class folder in sorted order (default: the folder
    names, underscores as spaces). ``split``: see :func:`zero_shot_samples`. Unreadable images are skipped
    (logged) and listed under ``skipped``. Returns {'metrics', 'undefined', 'per_class', 'class_names',
    'templates', 'split', 'data', 'num_images', 'num_evaluated', 'skipped', 'logits', 'targets'}.
    """
    from .data import DataError, ImageDataset, collate
    folders, samples, split, summary = zero_shot_samples(root, split)
    names = list(class_names) if class_names is not None else [prompt_name(c) for c in folders]
    if len(names) != len(folders):
        raise ConfigError(f"{len(names)} class names for {len(folders)} classes in {root!r} ({', '.join(folders[:8])}"
                          f"{' ...' if len(folders) > 8 else ''}); give one name per class, in sorted folder order")
    tmpl = load_templates(templates)
    _logger.info("zero-shot on %s: the %s images (%d; %s)", root, split, len(samples), summary)
    dataset = ImageDataset(samples, _Preprocess(clip_preprocess(adapter)), skip_corrupt=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    adapter = adapter.to(device).eval()
    clf = text_classifier(adapter, names, tmpl, device=device, classes_per_batch=classes_per_batch,
                          cache_dir=cache_dir)
    seen: List[torch.Tensor] = []

    def batches():
        for x, y, idx, _ in loader:
            seen.append(idx)
            yield x, y

    logits, targets = predict(encode_image or adapter.model.encode_image, clf, batches(), device)
    read = set(torch.cat(seen).tolist()) if seen else set()
    skipped = [samples[i][0] for i in range(len(samples)) if i not in read]
    if skipped:
        _logger.warning("skipped %d unreadable image(s) of %d", len(skipped), len(samples))
    if not len(targets):
        raise DataError(f"none of the {len(samples)} {split} images of {root!r} could be read (e.g. {skipped[0]!r}); "
                        f"check the files (vpt reads what PIL opens)")
    metrics, rows = classification_metrics(logits, targets, names)
    return {"metrics": metrics, "undefined": undefined_metrics(metrics, rows), "per_class": rows,
            "class_names": names, "templates": tmpl, "split": split, "data": summary, "num_images": len(samples),
            "num_evaluated": len(targets), "skipped": skipped, "logits": logits, "targets": targets}
