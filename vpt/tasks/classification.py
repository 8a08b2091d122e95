"""Image classification: an image folder or CSV, a prompted classifier (``model.type`` classifier | clip |
lora), cross-entropy, top-1 / top-5 / per-class metrics. The ``classification`` task of the engine."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..backbones.base import BackboneConfig
from ..data import IMAGE_EXTENSIONS, ImageDataset, build_transforms, collate, load_splits
from ..engine.build import memory_format
from ..engine.config import OptimSection, OutputSection, SchedSection, TrainSection
from ..engine.task import StepOutput, Task
from ..config import METHOD_SECTION, PROMPT_SECTION, Checked, FieldError, from_dict, one_of, option
from ..errors import ConfigError, DataError
from ..metrics import draw_confusion_matrix
from ..registry import MODEL_TYPES, TASKS
from .evaluation import brief, evaluate, predict_logits  # noqa: F401  (predict_logits: re-exported)

_logger = logging.getLogger(__name__)


# --- config ---------------------------------------------------------------------------------------
# sections of a model section whose config class depends on model.type (its class's ``config_sections``)
TYPED_SECTIONS = ("head", "text", "lora", "peft", "method")


@dataclass
class ModelSection(Checked):
    type: str = option("classifier", "key into vpt.registry.MODEL_TYPES (classifier | clip | lora)")
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # frozen encoder (library:arch[.tag])
    prompt: Optional[Any] = one_of(PROMPT_SECTION, help="image prompt: {kind: vpt_deep, num_tokens: 10, ...}; null: "
                                                        "linear probe / full fine-tuning")
    head: Any = option(help="head config (kind, pool, ...); its kinds depend on model.type",
                       default_factory=lambda: {"kind": "linear"})
    train_backbone: bool = option(False, "unfreeze the backbone (full fine-tuning baseline)")
    text: Optional[Any] = option(None, "CLIP learnable text context (model.type clip only)")
    method: Optional[Any] = one_of(METHOD_SECTION, help="a vision PEFT method ({kind: adapter | adaptformer | ssf | "
                                                        "bitfit | partial, ...}; vpt list shows them)")
    lora: Optional[Any] = option(None, "model.type lora only: {r, alpha, dropout, target_modules} (needs peft)")
    peft: Optional[Any] = option(None, "model.type peft only: {peft_type: LORA | IA3 | LOHA | ..., ...peft's fields} "
                                       "(needs peft)")

    def check(self) -> None:
        """Type head / text / lora by the model type's own sections (its class's ``config_sections``), so a
        typo in any of them fails here, when the recipe is loaded."""
        try:
            sections = MODEL_TYPES.get(self.type).factory.config_sections
        except KeyError as e:
            raise FieldError("type", f": {e.args[0]}") from None
        except ImportError as e:  # e.g. model.type clip without open_clip: the pip command
            raise FieldError("type", f": {e}") from None
        fields = {f.name: f for f in dataclasses.fields(sections)}
        for name in TYPED_SECTIONS:
            value, f = getattr(self, name), fields.get(name)
            if f is None:
                if value is not None and name != "head":
                    raise FieldError(name, f" is not used by model.type {self.type!r}; remove it "
                                           f"(model.type: {dict(text='clip', method='classifier').get(name, name)} takes it)")
                continue
            setattr(self, name, resolve_section(f, value, name))


@dataclass
class DataSection(Checked):
    root: Optional[str] = option(None, "image folder (root/<class>/* or root/{train,val,test}/<class>/*) or a CSV "
                                       "file")
    format: str = option("auto", "auto (from the folder) | folder | csv | vtab1k (NOAH's lists) | fgvc (KMnP's json) | "
                                 "coop (split_zhou_*.json); docs/benchmarks.md",
                         choices=("auto", "folder", "csv", "vtab1k", "fgvc", "coop"))
    benchmark_split: str = option("final", "published formats: final = train on train+val (VTAB train800val200), "
                                           "last epoch; tune = train on train, select on val (VTAB train800 / val200)",
                                  choices=("final", "tune"))
    val_fraction: float = option(0.1, "without a val split: this share of train, stratified per class",
                                 range=(0.0, 1.0, "[)"))
    test_fraction: float = option(0.0, "without a test split: this share of the pool held out for the final test",
                                  range=(0.0, 1.0, "[)"))
    split_seed: int = option(0, "seed of the stratified split and of the few-shot subset (independent of "
                                "train.seed)")
    shots: Optional[int] = option(None, "few-shot: keep k training images per class (after the val split)",
                                  range=(1, None))
    classes: str = option("all", "CoOp's halves of the sorted class names; base = the base-to-novel protocol (train "
                                 "on base, results.json also gets novel and hm; CLIP text-derived heads)",
                          choices=("all", "base", "novel"))
    skip_corrupt: bool = option(True, "false: a corrupt / unreadable image stops the run instead of being skipped")
    allow_outside_root: bool = option(False, "CSV data: allow image paths outside the CSV's folder")
    extensions: List[str] = option(help="files that count as images", default_factory=lambda: list(IMAGE_EXTENSIONS))


@dataclass
class AugmentSection(Checked):
    scale: Tuple[float, float] = option((0.08, 1.0), "random resized crop area range (timm --scale)",
                                        range=(0.0, 1.0, "(]"))
    ratio: Tuple[float, float] = option((0.75, 4.0 / 3.0), "random resized crop aspect range (timm --ratio)",
                                        range=(0.0, None, "()"))
    hflip: float = option(0.5, "horizontal flip probability (timm --hflip)", range=(0.0, 1.0))
    color_jitter: float = option(0.0, "brightness/contrast/saturation strength; 0 disables (timm --color-jitter)",
                                 range=(0.0, None))
    color_jitter_prob: float = option(0.8, "probability of applying colour jitter when enabled", range=(0.0, 1.0))
    enabled: bool = option(True, "false: train with the evaluation transform (no augmentation)")

    def check(self) -> None:
        for name in ("scale", "ratio"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise FieldError(name, f" must be [min, max] with min <= max, got {list(lo_hi)}")


@dataclass
class ClassificationTrainSection(TrainSection):
    label_smoothing: float = option(0.0, "cross-entropy label smoothing (timm --smoothing)", range=(0.0, 1.0, "[)"))
    lean: float = option(0.0, "share of blocks whose MLP activations are recomputed in backward (0: off, 1: all): "
                              "less memory, a little slower", range=(0.0, 1.0))
    channels_last: bool = option(False, "NHWC weights and inputs (timm --channels-last): faster convolutions (CNN "
                                        "backbones)")


@dataclass
class RunConfig:
    task: str = "classification"  # key into vpt.registry.TASKS: classification | clip | detection
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimSection = field(default_factory=OptimSection)
    sched: SchedSection = field(default_factory=SchedSection)
    train: ClassificationTrainSection = field(default_factory=ClassificationTrainSection)
    output: OutputSection = field(default_factory=OutputSection)


def resolve_section(f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` (a dict, kind name, None or config) typed as the sections field ``f`` declares."""
    spec = f.metadata.get("one_of")
    if spec is not None:
        return spec.resolve(value, where=where)
    cls = _field_class(f)
    if value is None or isinstance(value, cls):
        return value
    if cls is dict:  # a free mapping (model.peft: peft's own fields), checked by the model type when it builds
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of fields, got {type(value).__name__} {str(value)[:60]!r}")
        return dict(value)
    if isinstance(value, str):
        value = {"kind": value}
    return from_dict(_field_class(f), value, where=where)


def _field_class(f: dataclasses.Field) -> type:
    """The dataclass a sections field holds (its default's class)."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return type(default)


def validate(cfg: RunConfig) -> RunConfig:
    """Check the sections again (each checked itself when the recipe was loaded; this catches a field changed
    in place since); each message names the field and the fix."""
    from ..engine.config import validate_sections
    validate_sections(cfg)
    for name in ("data", "augment"):
        try:
            getattr(cfg, name).__post_init__()
        except FieldError as e:
            raise e.under(name) from None
    return cfg


# --- model ----------------------------------------------------------------------------------------
def ensure_model_type(name: str) -> None:
    """Model types other than 'classifier' register when their module is imported (e.g. vpt.clip): the
    registry imports the module it lists for a known name, never a module named by a config or artifact."""
    name in MODEL_TYPES  # noqa: B015  (the membership test loads a lazily registered type)


def build_model(section: Any, class_names: Sequence[str]) -> torch.nn.Module:
    """``classifier`` -> ``vpt.create_model``; any other type -> ``MODEL_TYPES[type].factory.from_section``."""
    from ..model import create_model
    if section.type == "classifier":
        if getattr(section.head, "pool", None) == "none":
            raise ConfigError("model.head.pool 'none' keeps every token (one output per token); a classification "
                              "task needs pooled features: use pool backbone, cls or avg")
        backbone = section.backbone
        if dataclasses.is_dataclass(backbone):
            backbone = dataclasses.replace(backbone)
        return create_model(backbone, prompt=section.prompt, num_classes=len(class_names), head=section.head,
                            class_names=list(class_names), train_backbone=section.train_backbone,
                            method=section.method)
    ensure_model_type(section.type)
    try:
        entry = MODEL_TYPES.get(section.type)
    except KeyError as e:
        raise ConfigError(f"model.type: {e.args[0]}") from None
    factory = entry.factory
    if not hasattr(factory, "from_section"):
        raise ConfigError(f"model.type {section.type!r} can't be built from a run config (its class has no "
                          f"from_section); available for training: classifier")
    return factory.from_section(section, list(class_names))


DATA_INIT_IMAGES = 64  # training images whose patch tokens prompt init "data" samples from (SPT: one batch)


# --- the task -------------------------------------------------------------------------------------
@TASKS.register("classification", config_cls=RunConfig, help="image folder / CSV -> class (cross-entropy)")
class ClassificationTask(Task):
    name = "classification"
    config_cls = RunConfig
    selection = "top1"
    selection_label = "top-1"

    def validate(self) -> None:
        validate(self.cfg)
        if not self.cfg.data.root:
            raise DataError("no data given: pass --data DIR (or set data.root in the recipe)")
        if self.cfg.data.classes == "base":
            from .protocols import check_transferable
            check_transferable(self.cfg.model)

    def setup(self, run) -> None:
        d = self.cfg.data
        self.splits = load_splits(d.root, d.val_fraction, d.test_fraction, d.split_seed, d.shots, d.extensions,
                                  classes=d.classes, allow_outside_root=d.allow_outside_root, format=d.format,
                                  benchmark_split=d.benchmark_split)
        _logger.info("data %s: %s", d.root, self.splits.summary())
        if not self.splits.train:
            raise DataError(f"no training images left in {d.root!r}")
        if not self.splits.val:
            _logger.warning("no validation split (no val/ folder and data.val_fraction=0): the best epoch is the last")
        if d.classes == "base" and not self.splits.test:
            raise DataError(f"base-to-novel reports test accuracy on the base and the novel classes, and {d.root!r} "
                            f"has no test split; add {d.root}/test/<class>/ folders or pass --test-fraction (e.g. 0.5)")

    def data_fingerprint(self) -> Dict[str, Any]:
        """Counts per split + sha256 of (split, path relative to the data's folder, label) and the class names:
        moving the data folder keeps it, other images or labels change it."""
        import hashlib
        s, root = self.splits, os.path.abspath(self.cfg.data.root)
        base = os.path.dirname(root) if os.path.isfile(root) else root
        h = hashlib.sha256("\n".join(s.class_names).encode())
        for split in ("train", "val", "test"):
            for p, y in getattr(s, split):
                h.update(f"\n{split}\t{os.path.relpath(os.path.abspath(p), base)}\t{y}".encode())
        return {"root": root, "classes": len(s.class_names), "train": len(s.train), "val": len(s.val),
                "test": len(s.test), "sha256": h.hexdigest()}

    def load_init(self, run, model, path: str) -> None:
        from ..artifact import init_from_artifact
        init_from_artifact(model, path)

    def build_model(self, run) -> torch.nn.Module:
        t = self.cfg.train
        model = self.create_model()
        self.memory_format = memory_format(t.channels_last)
        if t.channels_last:
            model.to(memory_format=self.memory_format)
        if t.lean:
            if not hasattr(model, "set_lean"):
                raise ConfigError(f"train.lean needs a model with a lean mode; model type "
                                  f"'{self.cfg.model.type}' has none: set train.lean: 0")
            model.set_lean(t.lean)
        train_tf, eval_tf = build_transforms(model.data_config, self.cfg.augment)
        skip = self.cfg.data.skip_corrupt
        self.datasets = {"train": ImageDataset(self.splits.train, train_tf, seed=t.seed, skip_corrupt=skip),
                         "val": ImageDataset(self.splits.val, eval_tf, skip_corrupt=skip),
                         "test": ImageDataset(self.splits.test, eval_tf, skip_corrupt=skip)}
        self.input_size = model.data_config.input_size
        self.init_prompts_from_data(run, model, eval_tf)
        return model

    def init_prompts_from_data(self, run, model: torch.nn.Module, eval_tf) -> None:
        """Prompt ``init: data``: up to ``DATA_INIT_IMAGES`` training images, picked with the run's seed and read
        with the eval transform, give the prompts their first values (``vpt.model.init_prompts_from_images``)."""
        if getattr(run, "resume", False) or self.cfg.train.init_from:
            return  # the run's saved tensors, or the artifact's, replace whatever would be drawn
        if not any(getattr(m, "pending_data_init", False) for m in model.modules()):
            return
        seed, train = self.cfg.train.seed, self.splits.train
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:DATA_INIT_IMAGES]
        ds = ImageDataset([train[i] for i in pick.tolist()], eval_tf, skip_corrupt=self.cfg.data.skip_corrupt)
        x = collate([ds[i] for i in range(len(ds))])[0]
        if x is None:
            raise DataError(f"prompt init data: none of the {len(ds)} training images drawn could be read; check "
                            f"the images in {self.cfg.data.root!r} or use another init")
        from ..model import init_prompts_from_images
        model.to(run.device)
        init_prompts_from_images(model, x.to(run.device, memory_format=self.memory_format), seed=seed)
        _logger.info("prompt init data: prompts drawn from the patch tokens of %d training images", x.shape[0])

    def create_model(self) -> torch.nn.Module:
        """The model of ``cfg.model`` for these classes (packed sweep trials build K at once instead)."""
        return build_model(self.cfg.model, self.splits.class_names)

    def train_dataset(self, run):
        return self.datasets["train"]

    def collate(self, batch):
        return collate(batch)

    def has_split(self, split: str) -> bool:
        return bool(getattr(self.splits, split))

    def train_step(self, run, net, batch) -> StepOutput:
        x, y, _, n_skip = batch
        if x is None:  # every image of this micro-batch was unreadable (or none was assigned)
            dummy = torch.zeros((1, *self.input_size), device=run.device)
            zero = net(dummy).float().sum() * 0.0
            run.model.auxiliary_loss()  # drop the dummy batch's extra terms
            return StepOutput(zero, 0, totals={"skipped": torch.tensor(float(n_skip), device=run.device)})
        x = x.to(run.device, non_blocking=True, memory_format=self.memory_format)
        y = y.to(run.device, non_blocking=True)
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=self.cfg.train.label_smoothing)
        aux = run.model.auxiliary_loss()  # the model's extra terms (KgCoOp, PromptSRC): a batch mean
        if aux is not None:
            loss = loss + aux.float() * len(y)
        correct = (logits.argmax(1) == y).sum()
        return StepOutput(loss, len(y), sums={"top1": 100.0 * correct.double()},
                          totals={"skipped": torch.tensor(float(n_skip), device=run.device)})

    def train_epoch_end(self, run, epoch: int, row: Dict[str, Any]) -> None:
        run.model.end_epoch(epoch - 1, self.cfg.train.epochs)  # e.g. PromptSRC's prompt aggregation (before val)
        if row["train_skipped"]:
            _logger.warning("epoch %d: skipped %d unreadable training images", epoch, row["train_skipped"])

    def state_dict(self, run) -> Dict[str, Any]:
        return {"model": run.model.run_state()}

    def load_state_dict(self, run, state: Dict[str, Any]) -> None:
        run.model.load_run_state(state.get("model") or {})

    def evaluate(self, run, model, split: str) -> Dict[str, Any]:
        t = self.cfg.train
        metrics = evaluate(model, self.datasets[split], self.splits.class_names, t.eval_batch_size, run.device,
                           t.amp_dtype, run.info, t.workers, t.progress, split, t.channels_last)
        if split == "test":
            self.test_metrics = metrics  # the base half of base-to-novel (results())
        return metrics

    def epoch_columns(self, val: Dict[str, Any]) -> Dict[str, float]:
        return {"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                "val_mean_per_class_recall": val["mean_per_class_recall"]}

    def brief(self, metrics):
        return brief(metrics)

    def results(self, run, model) -> Dict[str, Any]:
        s = self.splits
        out = {"data": {"root": self.cfg.data.root, "classes": s.class_names, "train": len(s.train),
                        "val": len(s.val), "test": len(s.test), "sources": s.source,
                        "ignored_non_image_files": s.ignored_files, "duplicate_files_dropped": s.duplicates},
               # which weights these are ('file:<sha256>', 'random:<seed>', 'hub:<tag>'), so results made
               # with different backbone weights under one name (vpt:NAME, hub tags) can be told apart
               "backbone": {k: model.backbone.identity()[k] for k in ("name", "arch", "weights_id")}}
        if self.cfg.data.classes == "base" and self.has_split("test"):
            # base-to-novel: the best prompts on the novel half's test images (never for a run blind to test,
            # such as a sweep's search trial)
            from .protocols import base_to_novel
            t = self.cfg.train
            out.update(base_to_novel(model, self.cfg.data, t, run.device, base_metrics=self.test_metrics,
                                     dist_info=run.info))
        return out

    def finish(self, run, results: Dict[str, Any]) -> None:
        test, val = results["test"], results["val"]
        shown = test or val
        if shown and shown.get("confusion_matrix"):
            draw_confusion_matrix(shown["confusion_matrix"], self.splits.class_names,
                                  os.path.join(run.run_dir, "confusion_matrix.png"),
                                  title=f"{'test' if test else 'val'} confusion (rows: true, cols: predicted)")
        _logger.info("best epoch %d (val top-1 %s); test top-1 %s", results["best_epoch"],
                     f"{val['top1']:.2f}" if val else "n/a", f"{test['top1']:.2f}" if test else "n/a (no test split)")

    def summary(self, results: Dict[str, Any]) -> List[str]:
        test, val = results["test"], results["val"]
        lines = [f"best epoch: {results['best_epoch']} ({results['selection']})"
                 + (f", val top-1 {val['top1']:.2f}" if val else "")]
        if test:
            lines.append(f"test top-1 {test['top1']:.2f}  top-5 {test['top5']:.2f}  "
                         f"mean per-class recall {test['mean_per_class_recall']:.2f}  (n={test['num_samples']})")
        if "hm" in results:
            lines.append(f"base-to-novel: base {results['base']:.2f}  novel {results['novel']:.2f}  "
                         f"HM {results['hm']:.2f}")
        return lines

    def evaluate_artifact(self, model, split: str, device) -> Dict[str, Any]:
        """The run's own split settings (data.*) and AMP dtype, so the test top-1 reproduces results.json."""
        from ..data import EvalTransform, class_mismatch_message
        d, t = self.cfg.data, self.cfg.train
        if not d.root:
            raise DataError("no data given: pass --data DIR")
        splits = load_splits(d.root, d.val_fraction, d.test_fraction, d.split_seed, d.shots, d.extensions,
                             classes=d.classes, allow_outside_root=d.allow_outside_root, format=d.format,
                                  benchmark_split=d.benchmark_split)
        if model.class_names is not None and list(model.class_names) != splits.class_names:
            raise DataError(class_mismatch_message(list(model.class_names), splits.class_names, d.root))
        samples = (splits.train + splits.val + splits.test) if split == "all" else getattr(splits, split)
        if not samples:
            raise DataError(f"{d.root!r} has no {split} images ({splits.summary()}); choose another --split")
        dataset = ImageDataset(samples, EvalTransform(model.data_config), skip_corrupt=d.skip_corrupt)
        if t.channels_last:
            model.to(memory_format=memory_format(True))
        metrics = evaluate(model, dataset, splits.class_names, t.eval_batch_size, device, t.amp_dtype,
                           workers=t.workers, channels_last=t.channels_last)
        return {"split": split, **{k: v for k, v in metrics.items() if k != "confusion_matrix"},
                "confusion_matrix": metrics["confusion_matrix"]}

    def eval_summary(self, split: str, m: Dict[str, Any]) -> str:
        return (f"{split}: top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  mean per-class recall "
                f"{m['mean_per_class_recall']:.2f}  loss {m['loss']:.4f}  (n={m['num_samples']}"
                f"{', skipped ' + str(m['skipped']) if m['skipped'] else ''})")
