"""Where this process runs: its rank in a torch.distributed group (if any) and its device."""

from __future__ import annotations

import torch


def distributed_ready() -> bool:
    """True inside an initialised torch.distributed process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside one."""
    if distributed_ready():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    return next(module.parameters(), torch.empty(0)).device
