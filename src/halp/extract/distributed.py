"""Data parallel extraction: which process am I, and waiting for the others.

`torchrun` and `accelerate launch` both describe a process through RANK, WORLD_SIZE and LOCAL_RANK; a
plain `halp extract` is rank 0 of 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    index: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> Rank:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


@contextmanager
def process_group(rank: Rank) -> Iterator[Rank]:
    """Join the launcher's process group (gloo on CPU, nccl on GPUs) for the duration of a run."""
    if rank.world == 1:
        yield rank
        return
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield rank
    finally:
        dist.destroy_process_group()
