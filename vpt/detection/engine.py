"""Detection training and evaluation loops on vpt.engine's pieces (optimizer / schedule, seeding,
run-folder guard, atomic checkpoints and artifacts, exact resume at epoch granularity).

Selection is honest: the best epoch is chosen by val COCO mAP, and the test split is evaluated once,
at the end, with the chosen tensors.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..commands._common import UserError
from ..config import ConfigError, to_dict
from ..engine import (MetricsWriter, RunDirError, attach_file_log, autocast, build_optimizer_and_scheduler,
                      detach_file_log, load_run_state, load_trainable_tensors, prepare_run_dir, resolve_device,
                      rng_state, save_artifact_atomic, save_run_state, seed_everything, set_rng_state,
                      tensorboard_writer, trainable_tensors)
from ..engine.checkpoint import ResumeError
from ..engine.config import amp_dtype_name
from ..engine.trainer import device_name, versions
from ..io import atomic_write_json, atomic_write_text
from .coco_eval import coco_map, mean_ap_dict, outputs_to_coco, records_to_coco
from .config import DetectionRunConfig
from .data import BoxStats, DetRecord, read_split
from .model import PromptedDetector, create_detector
from .transforms import DetectionDataset, build_transforms, collate

_logger = logging.getLogger(__name__)


def _loader(records: Sequence[DetRecord], transforms, label_offset: int, batch_size: int, workers: int,
            shuffle: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(DetectionDataset(records, transforms, label_offset), batch_size=batch_size,
                                       shuffle=shuffle, generator=g, num_workers=workers, collate_fn=collate)


@torch.no_grad()
def evaluate_detector(model: PromptedDetector, records: Sequence[DetRecord], device: torch.device,
                      batch_size: int = 8, amp_dtype: str = "float32", workers: int = 0) -> Dict[str, Any]:
    """COCO box metrics of ``model`` on ``records`` (original pixels, no augmentation)."""
    if not records:
        raise UserError("nothing to evaluate: the split has no images")
    was_training = model.training
    model.eval()
    dets: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    for images, targets in _loader(records, None, model.label_offset, batch_size, workers):
        with autocast(device, amp_dtype):
            outputs = model([x.to(device) for x in images])
        for out, tgt in zip(outputs, targets):
            dets.extend(outputs_to_coco(int(tgt["image_id"]), out, model.label_offset))
    seconds = time.perf_counter() - t0
    model.train(was_training)
    metrics = coco_map(records_to_coco(records, model.class_names), dets)
    metrics["images_per_second"] = len(records) / max(seconds, 1e-9)
    return metrics


def load_splits(cfg: DetectionRunConfig) -> Tuple[List[str], Dict[str, List[DetRecord]], Dict[str, BoxStats]]:
    """Train split first (it fixes the class list unless data.classes does), then val and test if present."""
    d = cfg.data
    train, classes, st = read_split(d, d.train_split, d.classes)
    if not train:
        raise UserError(f"the train split {d.train_split!r} of {d.root} has no images")
    splits, stats = {"train": train}, {"train": st}
    for name, split in (("val", d.val_split), ("test", d.test_split)):
        if not split:
            continue
        try:
            splits[name], _, stats[name] = read_split(d, split, classes)
        except UserError as e:
            if "not found" not in str(e):
                raise
            _logger.warning("no %s split (%s); %s", name, e, "selecting the last epoch" if name == "val" else "")
    return classes, splits, stats


def _validate(cfg: DetectionRunConfig) -> None:
    t = cfg.train
    t.amp_dtype = amp_dtype_name(t.amp_dtype)
    for ok, msg in ((t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
                    (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
                    (t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}"),
                    (cfg.task == "detection", f"task is {cfg.task!r}; this trainer runs task: detection")):
        if not ok:
            raise ConfigError(msg)
    if not cfg.data.root:
        raise UserError("no data folder: pass --data DIR (VOC or COCO layout) or set data.root")


def train_detector(cfg: DetectionRunConfig, resume: bool = False, overwrite: bool = False,
                   command: Optional[str] = None) -> Dict[str, Any]:
    """Run ``cfg`` end to end; returns the results (also written to ``<output.dir>/results.json``)."""
    _validate(cfg)
    t = cfg.train
    try:
        run_dir = prepare_run_dir(cfg.output.dir, resume=resume, overwrite=overwrite)
    except RunDirError as e:
        raise UserError(str(e)) from None
    handler = attach_file_log(os.path.join(run_dir, "train.log"))
    try:
        return _train(cfg, run_dir, resume, command)
    finally:
        detach_file_log(handler)


def _train(cfg: DetectionRunConfig, run_dir: str, resume: bool, command: Optional[str]) -> Dict[str, Any]:
    import yaml
    t = cfg.train
    device = resolve_device(t.device)
    seed_everything(t.seed)
    atomic_write_text(os.path.join(run_dir, "config.yaml"), yaml.safe_dump(to_dict(cfg), sort_keys=False))
    classes, splits, stats = load_splits(cfg)
    model = create_detector(cfg.model.backbone, classes, prompt=cfg.model.prompt, detector=cfg.detector).to(device)
    trainable, total = model.get_nb_trainable_parameters()
    _logger.info("%s on %s: classes %s (label map %s); trainable params: %s || all params: %s",
                 cfg.detector.kind, cfg.model.backbone.name, classes, model.label_map, f"{trainable:,d}", f"{total:,d}")
    tf = build_transforms(cfg.data, train=True, seed=t.seed)
    steps = math.ceil(len(splits["train"]) / t.batch_size)
    opt, sched, lr = build_optimizer_and_scheduler(model, cfg.optim, cfg.sched, t.batch_size, steps, t.epochs)
    start, best, best_tensors = 0, {"epoch": -1, "mAP": -1.0, "val": None}, None
    state_path = os.path.join(run_dir, "run_state.pt")
    if resume:
        try:
            state = load_run_state(state_path)
        except ResumeError as e:
            raise UserError(str(e)) from None
        load_trainable_tensors(model, state["trainable"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, best, best_tensors = state["epoch"] + 1, state["best"], state.get("best_tensors")
        _logger.info("resuming after epoch %d (best val mAP %.4f)", start, best["mAP"])
    metrics = MetricsWriter(os.path.join(run_dir, "metrics.csv"), keep_before_epoch=start + 1 if resume else None)
    tb = tensorboard_writer(os.path.join(run_dir, "tb")) if cfg.output.tensorboard else None
    train_ips: List[float] = []
    for epoch in range(start, t.epochs):
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **_train_epoch(model, splits["train"], tf, opt,
                                                                                    sched, cfg, device, epoch)}
        train_ips.append(row["train_images_per_second"])
        last = epoch == t.epochs - 1
        if "val" in splits and ((epoch + 1) % t.eval_every == 0 or last):
            val = evaluate_detector(model, splits["val"], device, t.eval_batch_size, t.amp_dtype, t.workers)
            row.update({"val_mAP": val["mAP"], "val_mAP50": val["mAP50"]})
            _logger.info("epoch %d/%d val: %s", epoch + 1, t.epochs, mean_ap_dict(val))
            if val["mAP"] > best["mAP"]:
                best, best_tensors = {"epoch": epoch, "mAP": val["mAP"], "val": val}, trainable_tensors(model)
                save_artifact_atomic(model, os.path.join(run_dir, "best"))
        elif "val" not in splits:
            best, best_tensors = {"epoch": epoch, "mAP": float("nan"), "val": None}, trainable_tensors(model)
            save_artifact_atomic(model, os.path.join(run_dir, "best"))
        _logger.info("epoch %d/%d: loss %.4f (%.1fs)", epoch + 1, t.epochs, row["train_loss"], row["epoch_seconds"])
        if cfg.output.save_last:
            save_artifact_atomic(model, os.path.join(run_dir, "last"))
        metrics.write(row)
        for k, v in row.items():
            if tb is not None and k != "epoch":
                tb.add_scalar(k, v, epoch + 1)
        save_run_state(state_path, {"epoch": epoch, "trainable": trainable_tensors(model), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "rng": rng_state(), "best": best,
                                    "best_tensors": best_tensors})
    if tb is not None:
        tb.close()
    if best_tensors is not None:
        load_trainable_tensors(model, best_tensors)
    test = (evaluate_detector(model, splits["test"], device, t.eval_batch_size, t.amp_dtype, t.workers)
            if "test" in splits else None)
    if test:
        _logger.info("test (best epoch %d): %s", best["epoch"] + 1, mean_ap_dict(test))
    results = {
        "task": "detection",
        "command": command,
        "selection": "best val mAP" if "val" in splits else "last epoch (no val split)",
        "best_epoch": best["epoch"] + 1,
        "val": best["val"],
        "test": test,
        "classes": classes,
        "label_map": model.label_map,
        "trainable_params": trainable,
        "total_params": total,
        "train_images_per_second": sum(train_ips) / len(train_ips) if train_ips else None,
        "data": {"root": cfg.data.root, **{k: len(v) for k, v in splits.items()},
                 "boxes": {k: {"kept": s.kept, "dropped_degenerate": s.degenerate, "dropped_outside": s.outside,
                               "clipped": s.clipped, "crowd_skipped": s.crowd} for k, s in stats.items()}},
        "device": device_name(device),
        "versions": {**versions(), "faster_coco_eval": _version("faster-coco-eval"),
                     "pycocotools": _version("pycocotools")},
        "config": to_dict(cfg),
    }
    atomic_write_json(os.path.join(run_dir, "results.json"), results)
    return results


def _train_epoch(model: PromptedDetector, records, tf, opt, sched, cfg: DetectionRunConfig, device: torch.device,
                 epoch: int) -> Dict[str, float]:
    t = cfg.train
    model.train()
    if tf is not None:
        tf.set_random_seed(t.seed * 1009 + epoch)  # augmentation repeats per (seed, epoch), also after --resume
    params = [p for p in model.parameters() if p.requires_grad]
    loader = _loader(records, tf, model.label_offset, t.batch_size, t.workers, shuffle=True,
                     seed=t.seed * 1009 + epoch)
    total, n, parts = 0.0, 0, {}
    t0 = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        images = [x.to(device) for x in images]
        targets = [{k: v.to(device) for k, v in tg.items()} for tg in targets]
        with autocast(device, t.amp_dtype):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite detection loss {({k: float(v) for k, v in losses.items()})} at "
                                     f"epoch {epoch + 1} step {step}; lower optim.lr or check the boxes")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(images)
        n += len(images)
        for k, v in losses.items():
            parts[k] = parts.get(k, 0.0) + float(v.detach()) * len(images)
        if t.log_interval and (step + 1) % t.log_interval == 0:
            _logger.info("epoch %d step %d: loss %.4f", epoch + 1, step + 1, total / n)
    seconds = time.perf_counter() - t0
    return {"train_loss": total / max(n, 1), **{f"train_{k}": v / max(n, 1) for k, v in parts.items()},
            "train_images_per_second": n / max(seconds, 1e-9), "epoch_seconds": seconds}


def _version(pkg: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None
