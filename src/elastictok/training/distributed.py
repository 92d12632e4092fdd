"""Multi-process training on PyTorch's own stack: torchrun, DDP or FSDP2, distributed checkpoints.

Launch ``torchrun --nproc_per_node=N -m elastictok.cli train --config ...`` (multi-node with
torchrun's usual ``--nnodes``/``--rdzv_endpoint`` flags). NCCL on GPUs, gloo on CPUs.
Checkpoints are ``torch.distributed.checkpoint`` directories, so a run saved by N processes
resumes on M.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ElasticTokError


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
    """Join the process group torchrun describes in the environment (if any); pick this rank's device."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        world = World(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else World()
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
    """``ddp``: replicate and average gradients; ``fsdp``: FSDP2 ``fully_shard`` per transformer block."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from ..layers.transformer import TransformerBlock
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for module in model.modules():
            if isinstance(module, TransformerBlock):
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


class DistributedCheckpoint:
    """``DIR/model_optim`` (torch.distributed.checkpoint shards) plus ``DIR/trainer.json``.

    Written into ``DIR.tmp`` and renamed by rank 0 after every rank has finished, so a crash
    never leaves half a checkpoint where ``DIR`` was.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def exists(self) -> bool:
        return (self.directory / "trainer.json").is_file()

    def save(self, model, optimizer, trainer_state: dict, world: World) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        tmp = self.directory.with_name(self.directory.name + ".tmp")
        if world.main and tmp.exists():
            shutil.rmtree(tmp)
        dist.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "model_optim"))
        dist.barrier()
        if world.main:
            (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "world_size": world.size}))
            old = self.directory.with_name(self.directory.name + ".old")
            if self.directory.exists():
                os.replace(self.directory, old)
            os.replace(tmp, self.directory)
            shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def load(self, model, optimizer) -> dict:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        try:
            trainer_state = json.loads((self.directory / "trainer.json").read_text())
            model_state, optim_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optim": optim_state}
            dcp.load(state, checkpoint_id=str(self.directory / "model_optim"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ElasticTokError(f"{self.directory}: not a readable distributed checkpoint "
                                  f"({str(exc).splitlines()[0][:160]})") from None
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return trainer_state


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
