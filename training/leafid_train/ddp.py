"""Multi-process training under ``torchrun`` (DDP, gloo backend on CPU).

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them training runs
in one process and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints, metrics and messages."""
        return self.rank == 0


def init_from_env() -> DistInfo:
    """Join the process group when started by torchrun (gloo backend)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (if joined)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for all processes."""
    if info.enabled:
        dist.barrier()


def all_gather(info: DistInfo, obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(info: DistInfo, module: Any) -> None:
    """Copy process 0's buffers (e.g. BatchNorm statistics) of ``module`` to every process."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
