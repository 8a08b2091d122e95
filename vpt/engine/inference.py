"""Sharded inference for evaluation: rank r runs a contiguous shard of the dataset, and every rank gets
every rank's outputs (in rank order), so metrics are computed once on the full set, the same everywhere."""
from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Tuple

import torch

from .distributed import DistInfo, all_gather_objects
from .runlog import progress
from .sampler import ShardSampler


def run_sharded(dataset, batch_size: int, collate: Callable, step: Callable[[Any], Any],
                info: Optional[DistInfo] = None, workers: int = 0, show_progress: Optional[bool] = None,
                desc: str = "eval") -> Tuple[List[Any], float]:
    """``step(batch)`` for this rank's batches (no grad); returns every rank's step outputs (picklable, in
    dataset order) and the slowest rank's seconds."""
    info = info or DistInfo()
    sampler = ShardSampler(len(dataset), batch_size, info.world_size, info.rank)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    start = time.perf_counter()
    with torch.no_grad():
        local = [step(batch) for batch in progress(loader, show_progress, info.is_main, desc=desc)]
    elapsed = time.perf_counter() - start
    parts = all_gather_objects((local, elapsed))
    return [out for rank_outs, _ in parts for out in rank_outs], max(s for _, s in parts)
