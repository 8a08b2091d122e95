"""Classification inference and metrics, shared by the classification / clip tasks, the CLIP protocols
(``protocols.py``) and ``vpt predict``: logits for a dataset (sharded under DDP, gathered on every rank)
and the metrics computed from them. Imports no task, so the tasks and the protocols both build on it."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data import collate
from ..engine.build import autocast, memory_format
from ..engine.distributed import DistInfo
from ..engine.inference import run_sharded
from ..metrics import classification_metrics


@torch.no_grad()
def predict_logits(model: torch.nn.Module, dataset, batch_size: int, device: torch.device,
                   amp_dtype: str = "float32", dist_info: Optional[DistInfo] = None, workers: int = 0,
                   show_progress: Optional[bool] = None, desc: str = "eval",
                   channels_last: bool = False) -> Dict[str, Any]:
    """Logits for every readable sample of ``dataset`` (in dataset order), gathered on every rank."""
    fmt = memory_format(channels_last)
    was_training = model.training
    model.eval()

    def step(batch):
        x, _, idx, n_skip = batch
        if x is None:
            return None, None, n_skip
        with autocast(device, amp_dtype):
            logits = model(x.to(device, non_blocking=True, memory_format=fmt))
        return idx, logits.float().cpu(), n_skip

    parts, seconds = run_sharded(dataset, batch_size, collate, step, dist_info or DistInfo(device=device), workers,
                                 show_progress, desc)
    model.train(was_training)
    idx_parts = [p[0] for p in parts if p[0] is not None]
    logit_parts = [p[1] for p in parts if p[1] is not None]
    idx = torch.cat(idx_parts) if idx_parts else torch.empty(0, dtype=torch.long)
    logits = torch.cat(logit_parts) if logit_parts else torch.empty(0)
    order = idx.argsort()
    return {"indices": idx[order], "logits": logits[order] if len(order) else logits,
            "skipped": sum(p[2] for p in parts), "seconds": seconds}


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


def brief(m: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The metrics results.json keeps (per-sample outputs dropped)."""
    if m is None:
        return None
    keys = ["num_samples", "top1", "top5", "mean_per_class_recall", "loss", "skipped", "images_per_second",
            "per_class_accuracy", "confusion_matrix"]
    return {k: m[k] for k in keys if k in m}
