"""Training augmentation (albumentations) and evaluation preprocessing (the backbone's own DataConfig)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

_CV2 = {"nearest": 0, "bilinear": 1, "bicubic": 2, "area": 3, "lanczos": 4}


def _size(data_config) -> tuple:
    _, h, w = data_config.input_size
    return int(h), int(w)


class EvalTransform:
    """timm's / open_clip's eval preprocessing from a DataConfig: resize the shorter side to
    ``floor(size / crop_pct)`` with the backbone's interpolation, centre crop, normalise."""

    def __init__(self, data_config):
        from torchvision import transforms as T
        from torchvision.transforms import InterpolationMode
        h, w = _size(data_config)
        crop_pct = float(data_config.crop_pct or 1.0)
        interp = InterpolationMode(data_config.interpolation) if data_config.interpolation in _CV2 and \
            data_config.interpolation != "area" else InterpolationMode.BICUBIC
        if h == w:
            scale = math.floor(h / crop_pct)
        else:
            scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        self.pipeline = T.Compose([
            T.Resize(scale, interpolation=interp),
            T.CenterCrop((h, w)),
            T.ToTensor(),
            T.Normalize(mean=list(data_config.mean), std=list(data_config.std)),
        ])

    def __call__(self, img, seed: int = 0) -> torch.Tensor:
        return self.pipeline(img)  # (C, H, W)


class TrainTransform:
    """albumentations: random resized crop, horizontal flip, optional colour jitter; seeded per sample."""

    def __init__(self, data_config, augment: Any):
        import albumentations as A
        h, w = _size(data_config)
        ops = [A.RandomResizedCrop(size=(h, w), scale=tuple(augment.scale), ratio=tuple(augment.ratio),
                                   interpolation=_CV2.get(data_config.interpolation, 2))]
        if augment.hflip > 0:
            ops.append(A.HorizontalFlip(p=augment.hflip))
        if augment.color_jitter > 0:
            s = float(augment.color_jitter)
            ops.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0.0, p=augment.color_jitter_prob))
        ops.append(A.Normalize(mean=tuple(data_config.mean), std=tuple(data_config.std), max_pixel_value=255.0))
        self.pipeline = A.Compose(ops, seed=0)

    def __call__(self, img, seed: int) -> torch.Tensor:
        self.pipeline.set_random_seed(seed)
        arr = self.pipeline(image=np.asarray(img))["image"]  # (H, W, C) float32
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # (C, H, W)


def build_transforms(data_config, augment: Any):
    """(train transform, eval transform) for a model's DataConfig and an AugmentSection."""
    eval_tf = EvalTransform(data_config)
    train_tf = TrainTransform(data_config, augment) if augment.enabled else eval_tf
    return train_tf, eval_tf
