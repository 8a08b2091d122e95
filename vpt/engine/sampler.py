"""Global-batch sampling that makes N ranks x k accumulation steps equal one process with the same batch.

Each epoch has one global order (seeded by seed and epoch). Global batch ``b`` is split into
``world * accum`` contiguous chunks (sizes differ by at most one); rank ``r`` takes chunk
``a * world + r`` at micro-step ``a``. The trainer divides each chunk's summed loss by the global
batch's size, so the summed (DDP-averaged x world) gradient is exactly the mean over the global batch,
as in a single process.
"""
from __future__ import annotations

from typing import Iterator, List

import numpy as np
import torch


class GlobalBatchSampler(torch.utils.data.Sampler):
    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 accum_steps: int = 1, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        self.n, self.batch_size, self.drop_last = num_samples, batch_size, drop_last
        self.world, self.rank, self.accum = world_size, rank, accum_steps
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> List[np.ndarray]:
        """This epoch's global batches (index arrays), identical on every rank."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).numpy()
        else:
            order = np.arange(self.n)
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.steps())]

    def steps(self) -> int:
        """Optimizer steps per epoch; ``drop_last``: whole batches only (a constant batch shape)."""
        return self.n // self.batch_size if self.drop_last else (self.n + self.batch_size - 1) // self.batch_size

    def plan(self) -> List[List[List[int]]]:
        """[step][micro-step] -> this rank's indices (possibly empty)."""
        out = []
        for gb in self.global_batches():
            chunks = np.array_split(gb, self.world * self.accum)
            out.append([chunks[a * self.world + self.rank].tolist() for a in range(self.accum)])
        return out

    def __iter__(self) -> Iterator[List[int]]:
        for step in self.plan():
            yield from step

    def __len__(self) -> int:
        return self.steps() * self.accum


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: rank r gets a contiguous shard of the dataset in order, batched; no padding, no repeats."""

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0):
        shard = np.array_split(np.arange(num_samples), world_size)[rank]
        per_rank = max(1, batch_size // world_size)
        self.batches = [shard[i:i + per_rank].tolist() for i in range(0, len(shard), per_rank)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
