"""The training loop: honest selection (best epoch on val only, test once at the end), AMP, gradient
accumulation, DDP over the trainable tensors, atomic checkpoints and exact resume at epoch granularity.

Equivalences the tests hold us to:
- ``torchrun --nproc_per_node=N`` == one process with the same ``train.batch_size`` (see ``sampler.py``);
  metrics agree up to float summation order (documented tolerance: weights within 1e-4, top-1 within
  one sample, with prompt/head dropout 0).
- a run killed anywhere and resumed == the uninterrupted run, exactly: sampling order, augmentation
  and dropout are seeded by (seed, epoch[, sample]), and the run state holds everything else.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..config import ConfigError, to_dict
from ..data import ImageDataset, build_transforms, collate, load_splits
from ..io import atomic_write_json, atomic_write_text
from .build import autocast, build_model, count_parameters, memory_format
from .checkpoint import (STATE_NAME, load_run_state, load_trainable_tensors, save_artifact_atomic, save_run_state,
                         trainable_tensors)
from .config import RunConfig, validate
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_object
from .evaluate import evaluate
from .metrics import MetricsWriter, draw_confusion_matrix
from .optim import build_optimizer_and_scheduler
from .rundir import prepare_run_dir
from .runlog import attach_file_log, detach_file_log, progress, tensorboard_writer
from .sampler import GlobalBatchSampler
from .seed import rng_state, seed_everything, set_rng_state

_logger = logging.getLogger(__name__)


def versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    from .. import __version__
    out: Dict[str, Optional[str]] = {"vpt": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("timm", "open_clip_torch", "torchvision", "albumentations"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def config_yaml(cfg: RunConfig) -> str:
    import yaml
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2 ** 63)


class Trainer:
    """One run. ``run()`` returns the results dict written to ``results.json``."""

    def __init__(self, cfg: RunConfig, info: DistInfo, resume: bool = False, overwrite: bool = False,
                 on_step: Optional[Callable[[int], None]] = None):
        self.cfg = validate(cfg)
        self.info, self.resume, self.overwrite, self.on_step = info, resume, overwrite, on_step
        self.run_dir = cfg.output.dir
        self.device = info.device

    # --- setup ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, info, t = self.cfg, self.info, self.cfg.train
        if t.batch_size % (info.world_size * t.grad_accum_steps):
            _logger.warning("train.batch_size %d is not a multiple of ranks x grad_accum_steps (%d); micro-batches "
                            "differ in size by one", t.batch_size, info.world_size * t.grad_accum_steps)
        # guard the run folder on every rank first (read-only), then let rank 0 change it
        if not info.is_main:
            from .rundir import RunDirError, holds_run
            if self.resume and not holds_run(self.run_dir):
                raise RunDirError(f"--resume: {self.run_dir!r} holds no run to resume")
        else:
            prepare_run_dir(self.run_dir, resume=self.resume, overwrite=self.overwrite)
        barrier()
        self.log_handler = attach_file_log(os.path.join(self.run_dir, "train.log")) if info.is_main else None
        d = cfg.data
        self.splits = load_splits(d.root, d.val_fraction, d.test_fraction, d.split_seed, d.shots, d.extensions)
        _logger.info("data %s: %s", d.root, self.splits.summary())
        if not self.splits.train:
            raise ValueError(f"no training images left in {d.root!r}")
        if not self.splits.val:
            _logger.warning("no validation split (no val/ folder and data.val_fraction=0): the best epoch is the last")

        seed_everything(t.seed, t.deterministic)
        self.model = build_model(cfg.model, self.splits.class_names).to(self.device)
        self.memory_format = memory_format(t.channels_last)
        if t.channels_last:
            self.model.to(memory_format=self.memory_format)
        self.params = count_parameters(self.model)
        _logger.info("trainable params: %d || all params: %d || trainable%%: %.4f", self.params["trainable"],
                     self.params["total"], self.params["trainable_percent"])
        train_tf, eval_tf = build_transforms(self.model.data_config, cfg.augment)
        skip = d.skip_corrupt
        self.train_ds = ImageDataset(self.splits.train, train_tf, seed=t.seed, skip_corrupt=skip)
        self.val_ds = ImageDataset(self.splits.val, eval_tf, skip_corrupt=skip)
        self.test_ds = ImageDataset(self.splits.test, eval_tf, skip_corrupt=skip)
        self.sampler = GlobalBatchSampler(len(self.train_ds), t.batch_size, info.world_size, info.rank,
                                          t.grad_accum_steps, seed=t.seed)
        self.steps_per_epoch = self.sampler.steps()
        self.optimizer, self.scheduler, self.lr = build_optimizer_and_scheduler(
            self.model, cfg.optim, cfg.sched, t.batch_size, self.steps_per_epoch, t.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type) if t.amp_dtype == "float16" else None

        self.start_epoch, self.best = 0, {"epoch": -1, "top1": -math.inf, "val": None}
        self.best_tensors = None
        if self.resume:
            self._load_state()
        if t.lean:
            if not hasattr(self.model, "set_lean"):
                raise ConfigError(f"train.lean needs a model with a lean mode; model type "
                                  f"'{cfg.model.type}' has none: set train.lean: 0")
            self.model.set_lean(t.lean)
        self.net = self.model
        if info.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if t.compile:
            self.net = torch.compile(self.net)
        if info.is_main:
            atomic_write_text(os.path.join(self.run_dir, "config.yaml"), config_yaml(cfg))
            self.metrics = MetricsWriter(os.path.join(self.run_dir, "metrics.csv"),
                                         keep_before_epoch=self.start_epoch + 1 if self.resume else None)
            self.tb = tensorboard_writer(os.path.join(self.run_dir, "tb")) if cfg.output.tensorboard else None

    def _load_state(self) -> None:
        state = load_run_state(os.path.join(self.run_dir, STATE_NAME))
        load_trainable_tensors(self.model, state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.best, self.best_tensors = state["epoch"], state["best"], state["best_tensors"]
        set_rng_state(state["rng"])
        _logger.info("resumed %s after epoch %d (best so far: epoch %d)", self.run_dir, self.start_epoch,
                     self.best["epoch"] + 1)

    def _save_state(self, epoch: int) -> None:
        save_run_state(os.path.join(self.run_dir, STATE_NAME), {
            "epoch": epoch + 1, "trainable": trainable_tensors(self.model), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "best": self.best, "best_tensors": self.best_tensors, "rng": rng_state(),
        })

    # --- one epoch --------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        t, info = self.cfg.train, self.info
        self.sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(t.seed, epoch, info.rank))  # dropout etc.
        global_sizes = [len(b) for b in self.sampler.global_batches()]
        loader = torch.utils.data.DataLoader(self.train_ds, batch_sampler=self.sampler, num_workers=t.workers,
                                             collate_fn=collate, pin_memory=self.device.type == "cuda")
        it = iter(loader)
        self.net.train()
        # running sums stay on the device: no host sync per step (read at log steps and at the end)
        loss_t = torch.zeros((), dtype=torch.float64, device=self.device)
        correct_t = torch.zeros((), dtype=torch.int64, device=self.device)
        count = skipped = 0.0
        start = time.perf_counter()
        steps = progress(range(self.steps_per_epoch), t.progress, info.is_main, desc=f"epoch {epoch + 1}")
        for step in steps:
            scale = info.world_size / global_sizes[step]  # DDP averages over ranks; we want the global mean
            for a in range(t.grad_accum_steps):
                x, y, _, n_skip = next(it)
                skipped += n_skip
                sync = (a == t.grad_accum_steps - 1 or not info.distributed)
                ctx = contextlib.nullcontext() if sync else self.net.no_sync()
                with ctx:
                    with autocast(self.device, t.amp_dtype):
                        if x is None:  # every image of this micro-batch was unreadable (or none was assigned)
                            dummy = torch.zeros((1, *self.model.data_config.input_size), device=self.device)
                            loss = self.net(dummy).float().sum() * 0.0
                        else:
                            x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
                            y = y.to(self.device, non_blocking=True)
                            logits = self.net(x)
                            loss = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=t.label_smoothing)
                            loss_t += loss.detach().double()
                            correct_t += (logits.argmax(1) == y).sum()
                            count += len(y)
                    scaled = loss * scale
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            self._optimizer_step()
            gstep = epoch * self.steps_per_epoch + step + 1
            if info.is_main and t.log_interval and (step + 1) % t.log_interval == 0:
                _logger.info("epoch %d step %d/%d loss %.4f lr %.4g", epoch + 1, step + 1, self.steps_per_epoch,
                             loss_t.item() / max(count, 1), self.optimizer.param_groups[0]["lr"])
            if self.on_step is not None:
                self.on_step(gstep)
        loss_sum, correct = loss_t.item(), float(correct_t.item())
        elapsed = time.perf_counter() - start
        loss_sum, correct, count, skipped = all_reduce_sum([loss_sum, correct, count, skipped], self.device)
        if skipped:
            _logger.warning("epoch %d: skipped %d unreadable training images", epoch + 1, int(skipped))
        return {"train_loss": loss_sum / max(count, 1), "train_top1": 100.0 * correct / max(count, 1),
                "train_images_per_second": count / elapsed if elapsed > 0 else float("nan"),
                "train_skipped": int(skipped), "epoch_seconds": elapsed}

    def _optimizer_step(self) -> None:
        clip = self.cfg.optim.clip_grad
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _evaluate(self, dataset, desc: str) -> Dict[str, Any]:
        t = self.cfg.train
        return evaluate(self.model, dataset, self.splits.class_names, t.eval_batch_size, self.device, t.amp_dtype,
                        self.info, t.workers, t.progress, desc, t.channels_last)

    # --- the run ----------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        try:
            self._setup()
            return self._run()
        finally:
            detach_file_log(getattr(self, "log_handler", None))
            if getattr(self, "tb", None) is not None:
                self.tb.close()

    def _run(self) -> Dict[str, Any]:
        cfg, t, info = self.cfg, self.cfg.train, self.info
        if self.start_epoch >= t.epochs:
            _logger.info("the run already finished its %d epochs; writing results again", t.epochs)
        train_ips: List[float] = []
        for epoch in range(self.start_epoch, t.epochs):
            row: Dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self._train_epoch(epoch))
            train_ips.append(row["train_images_per_second"])
            last = epoch == t.epochs - 1
            if self.splits.val and ((epoch + 1) % t.eval_every == 0 or last):
                val = self._evaluate(self.val_ds, "val")
                row.update({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                            "val_mean_per_class_recall": val["mean_per_class_recall"]})
                if val["top1"] > self.best["top1"]:
                    self.best = {"epoch": epoch, "top1": val["top1"], "val": _brief(val)}
                    self.best_tensors = trainable_tensors(self.model)
                    if info.is_main:
                        save_artifact_atomic(self.model, os.path.join(self.run_dir, "best"))
            elif not self.splits.val:
                self.best = {"epoch": epoch, "top1": float("nan"), "val": None}
                self.best_tensors = trainable_tensors(self.model)
                if info.is_main:
                    save_artifact_atomic(self.model, os.path.join(self.run_dir, "best"))
            _logger.info("epoch %d/%d: train loss %.4f top-1 %.2f%s (%.1fs)", epoch + 1, t.epochs, row["train_loss"],
                         row["train_top1"], f", val top-1 {row['val_top1']:.2f}" if "val_top1" in row else "",
                         row["epoch_seconds"])
            if info.is_main:
                if cfg.output.save_last:
                    save_artifact_atomic(self.model, os.path.join(self.run_dir, "last"))
                self.metrics.write(row)
                if self.tb is not None:
                    for k, v in row.items():
                        if k != "epoch":
                            self.tb.add_scalar(k, v, epoch + 1)
                self._save_state(epoch)
            barrier()
        return self._finish(train_ips)

    def _finish(self, train_ips: List[float]) -> Dict[str, Any]:
        cfg, info = self.cfg, self.info
        # the test set is seen exactly once, by the epoch chosen on val
        if self.best_tensors is not None:
            load_trainable_tensors(self.model, self.best_tensors)
        test = self._evaluate(self.test_ds, "test") if self.splits.test else None
        results = {
            "task": "classification",
            "selection": "best val top-1" if self.splits.val else "last epoch (no val split)",
            "best_epoch": self.best["epoch"] + 1,
            "val": self.best["val"],
            "test": _brief(test, per_class=True) if test else None,
            "trainable_params": self.params["trainable"],
            "total_params": self.params["total"],
            "throughput": {"train_images_per_second": (sum(train_ips) / len(train_ips)) if train_ips else None,
                           "eval_images_per_second": test["images_per_second"] if test else None},
            "data": {"root": cfg.data.root, "classes": self.splits.class_names, "train": len(self.splits.train),
                     "val": len(self.splits.val), "test": len(self.splits.test), "sources": self.splits.source,
                     "ignored_non_image_files": self.splits.ignored_files},
            # which weights these are ('file:<sha256>', 'random:<seed>', 'hub:<tag>'), so results made
            # with different backbone weights under one name (vpt:NAME, hub tags) can be told apart
            "backbone": {k: self.model.backbone.identity()[k] for k in ("name", "arch", "weights_id")},
            "world_size": info.world_size,
            "device": device_name(self.device),
            "versions": versions(),
            "config": to_dict(cfg),
        }
        if info.is_main:
            atomic_write_json(os.path.join(self.run_dir, "results.json"), results)
            shown = test or self.best["val"]
            if shown and shown.get("confusion_matrix"):
                draw_confusion_matrix(shown["confusion_matrix"], self.splits.class_names,
                                      os.path.join(self.run_dir, "confusion_matrix.png"),
                                      title=f"{'test' if test else 'val'} confusion (rows: true, cols: predicted)")
            _logger.info("best epoch %d (val top-1 %s); test top-1 %s", results["best_epoch"],
                         f"{self.best['top1']:.2f}" if self.best["val"] else "n/a",
                         f"{test['top1']:.2f}" if test else "n/a (no test split)")
        return broadcast_object(results)


def _brief(m: Optional[Dict[str, Any]], per_class: bool = True) -> Optional[Dict[str, Any]]:
    if m is None:
        return None
    keys = ["num_samples", "top1", "top5", "mean_per_class_recall", "loss", "skipped", "images_per_second"]
    out = {k: m[k] for k in keys if k in m}
    if per_class:
        out["per_class_accuracy"] = m["per_class_accuracy"]
        out["confusion_matrix"] = m["confusion_matrix"]
    return out


def train(cfg: RunConfig, info: Optional[DistInfo] = None, resume: bool = False, overwrite: bool = False,
          on_step: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Run ``cfg`` end to end and return the results (also in ``<output.dir>/results.json``)."""
    from .distributed import resolve_device
    info = info or DistInfo(device=resolve_device(cfg.train.device))
    return Trainer(cfg, info, resume=resume, overwrite=overwrite, on_step=on_step).run()
