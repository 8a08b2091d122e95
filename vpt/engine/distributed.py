"""torchrun / DDP plumbing: process-group setup, rank-0 checks, gathers.

Launch: ``torchrun --nproc_per_node=N -m vpt train ...``. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; without them everything here is a no-op and the run is single-process.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import torch
import torch.distributed as dist

_logger = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this init_distributed call created the process group (teardown leaves it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: Optional[str], local_rank: int = 0) -> torch.device:
    """None -> cuda:LOCAL_RANK when CUDA is available, else cpu; 'cuda' -> cuda:LOCAL_RANK."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        from ..errors import UserError
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N (or leave it out: cuda when "
                        f"available, else cpu)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from ..errors import UserError  # a RuntimeError too, as before
            raise UserError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu "
                            f"(or leave --device out: cuda when available, else cpu)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: Optional[str] = None, backend: Optional[str] = None,
                     env: Optional[Mapping[str, str]] = None) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); single process otherwise.

    A group that already exists (a program that set up DDP itself and calls vpt inside it) is used as it is,
    and ``teardown_distributed(info)`` leaves it to its owner."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank, local_rank = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
        _logger.info("joined process group: rank %d of %d (%s, %s)", rank, world, backend, dev)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)


def teardown_distributed(info: Optional[DistInfo] = None) -> None:
    """Wait for every rank (a rank that tears down while another still has a collective in flight can abort
    at exit), then destroy the process group, unless ``info`` says another caller created it."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            if info is None or info.owns_group:
                dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    """Sum a few scalars over ranks (float64); identity when single-process."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when single-process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
