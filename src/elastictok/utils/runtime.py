"""Where this process runs: its rank in a torch.distributed group (if any) and its device."""

from __future__ import annotations

import torch

from ..errors import ElasticTokError


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


def resolve_device(name: str | None) -> str:
    """The device to run on: ``name`` when this machine has it (default: cuda if available), else one line."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ElasticTokError(f"--device {name!r}: not a device name (cpu, cuda, cuda:1, mps ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ElasticTokError(f"--device {name}: this torch build or machine has no CUDA device; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ElasticTokError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ElasticTokError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ElasticTokError(f"--device {name}: unsupported device type {device.type!r}")
    return str(device)
