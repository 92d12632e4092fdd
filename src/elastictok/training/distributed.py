"""Multi-process training on PyTorch's own stack: torchrun, DDP or FSDP2, distributed checkpoints.

Launch ``torchrun --nproc_per_node=N -m elastictok.cli train --config ...`` (multi-node with
torchrun's usual ``--nnodes``/``--rdzv_endpoint`` flags). NCCL on GPUs, gloo on CPUs.
Checkpoints are ``torch.distributed.checkpoint`` directories, so a run saved by N processes
resumes on M.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ElasticTokError
from ..utils.runtime import rank_and_world_size, resolve_device


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment (if any); pick this rank's device (one
    that this machine lacks, such as cuda without a GPU, is refused in one line first)."""
    if device_name != "auto":
        resolve_device(device_name)
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        world = World(*rank_and_world_size())
    else:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    if device_name == "auto":
        device = torch.device(f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_name)
    return world, device


def wrap(model: nn.Module, mode: str, bf16: bool, device: torch.device) -> nn.Module:
    """``ddp``: replicate and average gradients; ``fsdp``: FSDP2 ``fully_shard`` per module of the family's
    ``fsdp_units`` (its transformer blocks), then the whole model."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for module in model.modules():
            if isinstance(module, model.fsdp_units):
                fully_shard(module, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    raise ElasticTokError(f"unknown distributed mode {mode!r}; use ddp or fsdp")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU (on every rank), from DDP, FSDP2 or a plain module."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=False)
    return get_model_state_dict(model, options=options)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
