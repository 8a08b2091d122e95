"""A labelled image dataset that never crashes an epoch on a bad file, with per-sample seeded augmentation.

Each sample's augmentation is seeded by (run seed, epoch, sample index), so the images a model sees do
not depend on the number of DataLoader workers or distributed ranks, nor on where a resumed run restarts.
"""
from __future__ import annotations

import logging
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


_logger = logging.getLogger(__name__)

BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


from ..errors import CorruptImageError  # noqa: F401  (re-exported)


def load_image(path: str) -> Image.Image:
    """Any PIL-readable file (JPEG, PNG, WebP, grayscale, 16-bit, palette, RGBA) -> an RGB image, turned
    upright by its EXIF orientation (phone photos are stored sideways with a tag that says so)."""
    with Image.open(path) as img:
        img.load()  # decode now: truncated files fail here, not later in a worker
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits
            arr = np.asarray(img, dtype=np.float64)
            hi = arr.max() or 1.0
            img = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8))
        elif img.mode == "P":
            img = img.convert("RGBA")
        return img.convert("RGB")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, independent of worker / rank layout."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class ImageDataset(torch.utils.data.Dataset):
    """(path, label) samples -> (image tensor, label, index); ``None`` for an unreadable file when skipping."""

    def __init__(self, samples: Sequence[Tuple[str, int]], transform: Callable, seed: int = 0,
                 skip_corrupt: bool = True):
        self.samples: List[Tuple[str, int]] = list(samples)
        self.transform = transform  # transform(pil_image, sample_seed) -> tensor (C, H, W)
        self.seed = seed
        self.epoch = 0
        self.skip_corrupt = skip_corrupt

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> List[int]:
        return [y for _, y in self.samples]

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            img = load_image(path)
        except BAD_IMAGE_ERRORS as e:
            if not self.skip_corrupt:
                raise CorruptImageError(f"cannot read image {path!r} ({type(e).__name__}: {e}); delete or replace "
                                        f"it, or set data.skip_corrupt: true to skip such files") from None
            _logger.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
            return None
        return self.transform(img, sample_seed(self.seed, self.epoch, index)), label, index


def collate(batch):
    """Stack the readable samples; returns (x or None, y, indices, number skipped)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    x = torch.stack([b[0] for b in good])  # (B, C, H, W)
    y = torch.tensor([b[1] for b in good], dtype=torch.long)
    idx = torch.tensor([b[2] for b in good], dtype=torch.long)
    return x, y, idx, skipped
