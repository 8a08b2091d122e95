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
    """A row-normalised confusion matrix as a PNG (rows: true class, columns: predicted), drawn with PIL.

    Class names are drawn in full (up to 200 px, then shortened with '…') with ``vpt.fonts``: any letter of
    any script a font on the chain has (vpt ships DejaVu Sans for Latin, Greek and Cyrillic); a character
    none has is logged once, with the fix."""
    from PIL import Image, ImageDraw

    from .fonts import TextRenderer
    m = np.asarray(confusion, dtype=np.float64)
    c = len(class_names)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    cell = max(16, min(48, 640 // max(c, 1)))
    text, small = TextRenderer(12), TextRenderer(10)
    line = 16  # height of a line of 12 px text
    names = [text.fit(str(n), 200) for n in class_names]
    label_w = 12 + int(max([text.length(n) for n in names] + [24]))
    title = title or "confusion matrix (rows: true, cols: predicted)"
    top = 8 + line + label_w
    W = max(label_w + c * cell + 10, 8 + int(text.length(title)))
    H = top + c * cell + 10
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    text.draw(d, (4, 4), title)
    for i, name in enumerate(names):
        text.draw(d, (4, top + i * cell + (cell - line) // 2), name)
        # column label: drawn horizontally on its own layer, turned 90 degrees, pasted above column i
        layer = Image.new("RGBA", (label_w, line), (255, 255, 255, 0))
        text.draw(ImageDraw.Draw(layer), (0, 0), name)
        layer = layer.rotate(90, expand=True)  # (line, label_w): reads bottom to top
        img.paste(layer, (label_w + i * cell + (cell - line) // 2, top - 4 - label_w), layer)
        for j in range(c):
            v = norm[i, j]
            shade = int(255 * (1 - v))
            x0, y0 = label_w + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(220, 220, 220))
            if cell >= 24 and m[i, j] > 0:
                small.draw(d, (x0 + 3, y0 + (cell - 13) // 2), str(int(m[i, j])), fill="white" if v > 0.5 else "black")
    text.warn_missing(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
