"""Evaluation: sharded over ranks, predictions gathered, metrics computed once on the full set."""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data import collate
from .build import autocast, memory_format
from .distributed import DistInfo, all_gather_objects
from .metrics import classification_metrics
from .runlog import progress
from .sampler import ShardSampler

_logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, dataset, batch_size: int, device: torch.device,
                   amp_dtype: str = "float32", dist_info: Optional[DistInfo] = None, workers: int = 0,
                   show_progress: Optional[bool] = None, desc: str = "eval",
                   channels_last: bool = False) -> Dict[str, Any]:
    """Logits for every readable sample of ``dataset`` (in dataset order), gathered on every rank."""
    info = dist_info or DistInfo(device=device)
    sampler = ShardSampler(len(dataset), batch_size, info.world_size, info.rank)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    fmt = memory_format(channels_last)
    was_training = model.training
    model.eval()
    idx_parts, logit_parts, skipped = [], [], 0
    start = time.perf_counter()
    for x, y, idx, n_skip in progress(loader, show_progress, info.is_main, desc=desc):
        skipped += n_skip
        if x is None:
            continue
        with autocast(device, amp_dtype):
            logits = model(x.to(device, non_blocking=True, memory_format=fmt))
        logit_parts.append(logits.float().cpu())
        idx_parts.append(idx)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    local = (torch.cat(idx_parts) if idx_parts else torch.empty(0, dtype=torch.long),
             torch.cat(logit_parts) if logit_parts else torch.empty(0), skipped, elapsed)
    parts = all_gather_objects(local)
    idx = torch.cat([p[0] for p in parts])
    logits = torch.cat([p[1] for p in parts if p[1].numel()]) if any(p[1].numel() for p in parts) else torch.empty(0)
    order = idx.argsort()
    return {"indices": idx[order], "logits": logits[order] if len(order) else logits,
            "skipped": sum(p[2] for p in parts), "seconds": max(p[3] for p in parts)}


def evaluate(model: torch.nn.Module, dataset, class_names: Sequence[str], batch_size: int, device: torch.device,
             amp_dtype: str = "float32", dist_info: Optional[DistInfo] = None, workers: int = 0,
             show_progress: Optional[bool] = None, desc: str = "eval",
             channels_last: bool = False) -> Dict[str, Any]:
    """Loss, top-1 / top-5, mean per-class recall, per-class accuracy, confusion matrix, throughput."""
    out = predict_logits(model, dataset, batch_size, device, amp_dtype, dist_info, workers, show_progress, desc,
                         channels_last)
    targets = torch.tensor([dataset.samples[i][1] for i in out["indices"].tolist()], dtype=torch.long)
    metrics = classification_metrics(out["logits"], targets, class_names)
    metrics["loss"] = F.cross_entropy(out["logits"], targets).item() if len(targets) else float("nan")
    metrics["skipped"] = out["skipped"]
    metrics["images_per_second"] = len(targets) / out["seconds"] if out["seconds"] > 0 else float("nan")
    return metrics
