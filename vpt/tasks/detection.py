"""Object detection: VOC / COCO boxes, a frozen prompted ViT + simple feature pyramid + torchvision detector
(``vpt.detection``), the detector's own losses, COCO mAP. The ``detection`` task of the engine.

Selection is honest: the best epoch is chosen by val COCO mAP, and the test split is evaluated once, at
the end, with the chosen tensors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..detection.coco_eval import coco_map, mean_ap_dict, outputs_to_coco, records_to_coco
from ..detection.config import DetDataConfig, DetectorConfig, DetModelSection
from ..detection.data import BoxStats, DetRecord, read_split
from ..detection.model import PromptedDetector, create_detector
from ..detection.transforms import DetectionDataset, build_transforms, collate
from ..engine.build import autocast
from ..engine.config import OptimSection, OutputSection, SchedSection, TrainSection
from ..engine.distributed import DistInfo
from ..engine.inference import run_sharded
from ..engine.task import StepOutput, Task
from ..errors import ConfigError, DataError
from ..registry import TASKS

_logger = logging.getLogger(__name__)


# --- config (the detector's own sections live in vpt.detection.config) ---------------------------
@dataclass
class DetTrainSection(TrainSection):
    """The engine's train section with detection defaults."""
    epochs: int = 12  # passes over the train split
    batch_size: int = 4  # images per optimizer step (global: all ranks x accumulation steps)
    eval_batch_size: int = 8  # images per evaluation forward (global; split over ranks)
    workers: int = 0  # DataLoader worker processes per rank (0: load in the main process)
    log_interval: int = 20  # log the running loss every N optimizer steps


@dataclass
class DetOptimSection(OptimSection):
    """The engine's optimizer section with detection defaults (a partial YAML section keeps them)."""
    opt: str = "adamw"  # sgd | adamw
    lr: Optional[float] = 1e-3  # absolute learning rate for prompts, pyramid and head
    weight_decay: float = 1e-4  # AdamW decoupled weight decay (not on prompts, biases, norms)
    clip_grad: Optional[float] = 1.0  # clip the gradient norm to this value; None: off


@dataclass
class DetSchedSection(SchedSection):
    warmup_epochs: float = 1.0  # linear warmup over this many epochs, then cosine


@dataclass
class DetOutputSection(OutputSection):
    dir: str = "runs/detection"  # run folder: config.yaml, train.log, metrics.csv, results.json, best/, last/


@dataclass
class DetectionRunConfig:
    """A whole `vpt train --task detection` run: the engine's sections (detection defaults) + model, detector, data."""
    task: str = "detection"  # key into vpt.registry.TASKS (vpt.tasks.detection)
    model: DetModelSection = field(default_factory=DetModelSection)  # frozen backbone + prompt
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # pyramid + torchvision detector
    data: DetDataConfig = field(default_factory=DetDataConfig)  # VOC / COCO folder, splits, augmentation
    optim: DetOptimSection = field(default_factory=DetOptimSection)  # AdamW lr 1e-3 over prompts, pyramid and head
    sched: DetSchedSection = field(default_factory=DetSchedSection)  # 1 warmup epoch, then cosine
    train: DetTrainSection = field(default_factory=DetTrainSection)
    output: DetOutputSection = field(default_factory=DetOutputSection)  # run folder: best/, last/, results.json, ...




@torch.no_grad()
def evaluate_detector(model: PromptedDetector, records: Sequence[DetRecord], device: torch.device,
                      batch_size: int = 8, amp_dtype: str = "float32", workers: int = 0,
                      dist_info: Optional[DistInfo] = None, show_progress: Optional[bool] = None,
                      desc: str = "eval") -> Dict[str, Any]:
    """COCO box metrics of ``model`` on ``records`` (original pixels, no augmentation); sharded over ranks."""
    if not records:
        raise DataError("nothing to evaluate: the split has no images")
    was_training = model.training
    model.eval()

    def step(batch):
        images, targets = batch
        with autocast(device, amp_dtype):
            outputs = model([x.to(device) for x in images])
        return [d for out, tgt in zip(outputs, targets)
                for d in outputs_to_coco(int(tgt["image_id"]), out, model.label_offset)]

    parts, seconds = run_sharded(DetectionDataset(records, None, model.label_offset), batch_size, collate, step,
                                 dist_info or DistInfo(device=device), workers, show_progress, desc)
    model.train(was_training)
    metrics = coco_map(records_to_coco(records, model.class_names), [d for part in parts for d in part])
    metrics["images_per_second"] = len(records) / max(seconds, 1e-9)
    return metrics


def load_splits(cfg: DetectionRunConfig) -> Tuple[List[str], Dict[str, List[DetRecord]], Dict[str, BoxStats]]:
    """Train split first (it fixes the class list unless data.classes does), then val and test if present."""
    d = cfg.data
    train, classes, st = read_split(d, d.train_split, d.classes)
    if not train:
        raise DataError(f"the train split {d.train_split!r} of {d.root} has no images")
    splits, stats = {"train": train}, {"train": st}
    for name, split in (("val", d.val_split), ("test", d.test_split)):
        if not split:
            continue
        try:
            splits[name], _, stats[name] = read_split(d, split, classes)
        except DataError as e:
            if "not found" not in str(e):
                raise
            _logger.warning("no %s split (%s); %s", name, e, "selecting the last epoch" if name == "val" else "")
    return classes, splits, stats


class _EpochSeededDataset(DetectionDataset):
    """The train split: albumentations keeps its own generator, re-seeded per (seed, epoch) so that runs and
    resumed runs repeat exactly."""

    def __init__(self, records, transforms, label_offset: int, seed: int):
        super().__init__(records, transforms, label_offset)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        if self.transforms is not None:
            self.transforms.set_random_seed(self.seed * 1009 + epoch)


@TASKS.register("detection", config_cls=DetectionRunConfig, help="VOC / COCO boxes -> FCOS / RetinaNet / Faster R-CNN")
class DetectionTask(Task):
    name = "detection"
    config_cls = DetectionRunConfig
    selection = "mAP"
    field_aliases = {"augment.hflip": "data.hflip"}

    def validate(self) -> None:
        if self.cfg.task != "detection":
            raise ConfigError(f"task is {self.cfg.task!r}; this task runs task: detection")
        if not self.cfg.data.root:
            raise DataError("no data folder: pass --data DIR (VOC or COCO layout) or set data.root")

    def setup(self, run) -> None:
        self.classes, self.splits, self.stats = load_splits(self.cfg)

    def load_init(self, run, model, path: str) -> None:
        from ..artifact import init_from_artifact
        init_from_artifact(model, path)

    def build_model(self, run) -> torch.nn.Module:
        cfg = self.cfg
        model = create_detector(cfg.model.backbone, self.classes, prompt=cfg.model.prompt, detector=cfg.detector,
                                train_backbone=cfg.model.train_backbone)
        _logger.info("%s on %s: classes %s (label map %s)", cfg.detector.kind, cfg.model.backbone.name, self.classes,
                     model.label_map)
        self.label_offset = model.label_offset
        tf = build_transforms(cfg.data, train=True, seed=cfg.train.seed)
        self.train_ds = _EpochSeededDataset(self.splits["train"], tf, model.label_offset, cfg.train.seed)
        return model

    def train_dataset(self, run):
        return self.train_ds

    def collate(self, batch):
        return collate(batch) if batch else ([], [])

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def train_step(self, run, net, batch) -> StepOutput:
        images, targets = batch
        n = len(images)
        if not n:  # this rank's share of the batch is empty: a zero loss through the model keeps DDP in step
            images = [torch.zeros(3, 32, 32)]
            targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
        images = [x.to(run.device) for x in images]
        targets = [{k: v.to(run.device) for k, v in tg.items()} for tg in targets]
        losses = net(images, targets)
        loss = sum(losses.values())  # the detector's losses are means over the micro-batch's images
        return StepOutput(loss * n, n, sums={k: v.detach().double() * n for k, v in losses.items()})

    def evaluate(self, run, model, split: str) -> Dict[str, Any]:
        t = self.cfg.train
        metrics = evaluate_detector(model, self.splits[split], run.device, t.eval_batch_size, t.amp_dtype,
                                    t.workers, run.info, t.progress, split)
        _logger.info("%s (epoch %d): %s", split, run.epoch + 1, mean_ap_dict(metrics))
        return metrics

    def epoch_columns(self, val: Dict[str, Any]) -> Dict[str, float]:
        return {"val_mAP": val["mAP"], "val_mAP50": val["mAP50"]}

    def results(self, run, model) -> Dict[str, Any]:
        from ..engine.trainer import package_version, versions
        tp = sum(run.train_ips) / len(run.train_ips) if run.train_ips else None
        return {"classes": self.classes, "label_map": model.label_map, "train_images_per_second": tp,
                "data": {"root": self.cfg.data.root, **{k: len(v) for k, v in self.splits.items()},
                         "boxes": {k: {"kept": s.kept, "dropped_degenerate": s.degenerate,
                                       "dropped_outside": s.outside, "clipped": s.clipped, "crowd_skipped": s.crowd}
                                   for k, s in self.stats.items()}},
                "versions": {**versions(), "faster_coco_eval": package_version("faster-coco-eval"),
                             "pycocotools": package_version("pycocotools")}}

    def summary(self, results: Dict[str, Any]) -> List[str]:
        val, test = results["val"], results["test"]
        lines = [f"best epoch {results['best_epoch']}: val mAP {val['mAP']:.4f} mAP@0.5 {val['mAP50']:.4f}" if val
                 else "no val split: kept the last epoch"]
        if test:
            lines.append(f"test mAP {test['mAP']:.4f} mAP@0.5 {test['mAP50']:.4f}; per class: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in test["per_class_AP"].items()))
        return lines

    def evaluate_artifact(self, model, split: str, device) -> Dict[str, Any]:
        d, t = self.cfg.data, self.cfg.train
        if not d.root:
            raise DataError("no data folder: pass --data DIR (VOC or COCO layout)")
        if split == "all":
            raise DataError("--split all is not supported for detection; evaluate train, val and test one at a time")
        split = {"train": d.train_split, "val": d.val_split, "test": d.test_split}.get(split, split)
        records, _, stats = read_split(d, split, model.class_names)
        metrics = evaluate_detector(model, records, device, t.eval_batch_size, t.amp_dtype, t.workers)
        return {"split": split, **metrics,
                "boxes": {"kept": stats.kept, "dropped_degenerate": stats.degenerate, "dropped_outside": stats.outside}}

    def eval_summary(self, split: str, metrics: Dict[str, Any]) -> str:
        return (f"{metrics['split']}: {mean_ap_dict(metrics)} ({metrics['num_images']} images, "
                f"evaluator {metrics['evaluator']})")
