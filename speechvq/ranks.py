"""Where this process stands under torchrun: its rank and the number of ranks (0 and 1 without a process group)."""

from __future__ import annotations

import torch.distributed as dist


def process_group() -> tuple[int, int]:
    """(rank, world size): torchrun's when a process group is up, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distributed() -> bool:
    """Several ranks share the work."""
    return process_group()[1] > 1
