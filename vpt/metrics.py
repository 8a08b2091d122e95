"""Classification metrics and a confusion-matrix image (PIL only)."""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence

import numpy as np
import torch


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> Dict[str, Any]:
    """top-1 / top-5 (percent), mean per-class recall, per-class accuracy, confusion matrix (rows: truth)."""
    n, c = len(targets), len(class_names)
    if n == 0:
        return {"num_samples": 0, "top1": float("nan"), "top5": float("nan"), "mean_per_class_recall": float("nan"),
                "per_class_accuracy": {}, "confusion_matrix": [[0] * c for _ in range(c)]}
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices  # (n, k)
    correct = topk.eq(targets[:, None])
    pred = topk[:, 0]
    conf = torch.zeros(c, c, dtype=torch.long)
    conf.index_put_((targets, pred), torch.ones_like(targets), accumulate=True)
    support = conf.sum(1)
    recall = conf.diag().double() / support.clamp(min=1).double()
    present = support > 0
    return {
        "num_samples": int(n),
        "top1": 100.0 * correct[:, 0].double().mean().item(),
        "top5": 100.0 * correct.any(1).double().mean().item(),
        "mean_per_class_recall": 100.0 * recall[present].mean().item(),
        "per_class_accuracy": {name: (100.0 * recall[i].item() if present[i] else None)
                               for i, name in enumerate(class_names)},
        "confusion_matrix": conf.tolist(),
    }


def draw_confusion_matrix(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str,
                          title: str = "") -> None:
    """A row-normalised confusion matrix as a PNG (rows: true class, columns: predicted), drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont
    m = np.asarray(confusion, dtype=np.float64)
    c = len(class_names)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    cell = max(14, min(48, 640 // max(c, 1)))
    font = ImageFont.load_default()
    label_w = min(160, 8 + 7 * max((len(str(n)) for n in class_names), default=4))
    top = 24 + label_w
    W, H = label_w + c * cell + 10, top + c * cell + 10
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((4, 4), title or "confusion matrix (rows: true, cols: predicted)", fill="black", font=font)
    for i in range(c):
        name = str(class_names[i])[:22]
        d.text((4, top + i * cell + cell // 2 - 5), name, fill="black", font=font)
        # column labels, drawn rotated
        txt = Image.new("RGBA", (label_w, 12), (255, 255, 255, 0))
        ImageDraw.Draw(txt).text((0, 0), name, fill="black", font=font)
        txt = txt.rotate(90, expand=True)
        img.paste(txt, (label_w + i * cell + cell // 2 - 6, 20 + label_w - txt.size[1]), txt)
        for j in range(c):
            v = norm[i, j]
            shade = int(255 * (1 - v))
            x0, y0 = label_w + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(220, 220, 220))
            if cell >= 24 and m[i, j] > 0:
                d.text((x0 + 3, y0 + cell // 2 - 5), str(int(m[i, j])), fill="white" if v > 0.5 else "black", font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
