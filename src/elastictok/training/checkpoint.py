"""Training checkpoints: one interface, a single-process form and a distributed form.

Both restore the same ``TrainState`` (model, optimiser, scheduler, EMA, step) and record the same
trainer fields: ``step``, ``data_position`` (batches consumed; batch k is a pure function of k, so
this is where the data resumes), ``scheduler``, ``model_config`` and ``train_config``.

- ``FileCheckpoint``: ``checkpoints/last.pt``, one ``torch.save`` file loaded with ``weights_only=True``.
- ``DistributedCheckpoint``: ``checkpoints/last/`` holding ``model_optim`` (torch.distributed.checkpoint
  shards, so a run saved by N processes resumes on M) and ``trainer.json``.

Checkpoints written before this interface load unchanged (the single-file form then stored the model
config as a JSON string; both are read).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ElasticTokError
from ..utils.fileio import atomic_path, check_input_file
from ..utils.runtime import interrupts_held
from .distributed import World


@dataclass
class TrainState:
    """Everything a checkpoint saves and restores."""

    model: nn.Module  # the bare model
    net: nn.Module  # what trains: the model, or its DDP / FSDP2 form
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler
    ema: Any  # torch.optim.swa_utils.AveragedModel, or None
    world: World
    cfg: Any  # the TrainConfig
    step: int = 0
    clock: Any = None  # the run's TrainingClock (minutes trained, across resumes)

    def trainer_fields(self) -> dict[str, Any]:
        return {"step": self.step, "data_position": self.step * self.cfg.grad_accum,
                "train_seconds": self.clock.seconds if self.clock else 0.0,
                "scheduler": self.scheduler.state_dict(), "model_config": self.model.config.to_dict(),
                "train_config": dataclasses.asdict(self.cfg)}

    def restore_trainer_fields(self, fields: dict[str, Any], where: Path) -> None:
        """Check the model config matches, then restore the scheduler and step."""
        if not (isinstance(fields, dict) and type(fields.get("step")) is int and fields["step"] >= 0):
            raise ElasticTokError(f"{where}: a damaged training checkpoint (no step count)")
        if type(self.model.config).from_dict(_unpacked(fields["model_config"])) != self.model.config:
            raise ElasticTokError(f"{where} was written for a different model config; not resuming")
        optimizer = _saved_train_field(fields, "optimizer", "adamw")
        if optimizer != self.cfg.optimizer:  # their states differ in layout
            raise ElasticTokError(f"{where} was written by a run with optimizer: {optimizer}; not resuming it with "
                                  f"optimizer: {self.cfg.optimizer}")
        clock = _saved_train_field(fields, "clock", "wall")
        if clock != self.cfg.clock:  # seconds of one clock are not seconds of the other
            raise ElasticTokError(f"{where} was written by a run with clock: {clock}; not resuming it with "
                                  f"clock: {self.cfg.clock}")
        self.scheduler.load_state_dict(fields["scheduler"])
        self.step = fields["step"]
        if self.clock is not None:  # checkpoints written before the clock existed start it at zero
            self.clock.restore(float(fields.get("train_seconds", 0.0)))


def _saved_train_field(fields: dict[str, Any], name: str, before: str) -> str:
    """A training-config field of a checkpoint's run; ``before`` for checkpoints written before the field existed
    (AdamW as the optimizer, the wall clock)."""
    config = _unpacked(fields.get("train_config"))
    return config.get(name, before) if isinstance(config, dict) else before


def _unpacked(config: Any) -> Any:
    """A config read from a trainer field, which holds a dict or (in a single-file checkpoint) its JSON text."""
    return json.loads(config) if isinstance(config, str) else config


class Checkpoint(Protocol):
    """Where a run's latest training state lives."""

    def exists(self) -> bool: ...
    def save(self, state: TrainState) -> None: ...
    def load(self, state: TrainState) -> None: ...  # restores into ``state`` (its step included)


def checkpoint_for(out_dir: Path, world: World) -> Checkpoint:
    """The run's checkpoint in the form its process layout needs (a distributed one whole again, if a
    save was stopped between its renames)."""
    if world.distributed:
        checkpoint = DistributedCheckpoint(out_dir / "checkpoints" / "last")
        checkpoint.finish_interrupted_save(world)
        return checkpoint
    return FileCheckpoint(out_dir / "checkpoints" / "last.pt")


def _why_unreadable(exc: Exception) -> str:
    """torch.load's refusal in a few words: its own text runs to several lines (and suggests unpickling
    unsafely) or is a bare number."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        return "it holds Python objects, not only tensors; refused without running them"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first and not first.isdigit() else type(exc).__name__


class FileCheckpoint:
    """Single-process checkpoint: one file, loaded with ``weights_only=True``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state: TrainState) -> None:
        ema = state.ema
        fields = state.trainer_fields()
        blob = {
            **fields,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "ema_n_averaged": ema.n_averaged if ema is not None else None,
            "train_config": json.dumps(fields["train_config"]),
            "model_config": json.dumps(fields["model_config"]),
        }
        with atomic_path(self.path) as tmp:
            torch.save(blob, tmp)

    def read(self) -> dict[str, Any]:
        path = check_input_file(self.path, "a training checkpoint")  # a pipe would hang the read
        try:
            with interrupts_held():  # torch turns an interrupt inside it into an unrelated error
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ElasticTokError(f"{self.path}: not a readable training checkpoint ({_why_unreadable(exc)})") from None

    def load(self, state: TrainState) -> None:
        blob = self.read()
        try:
            state.restore_trainer_fields(blob, self.path)
            state.model.load_state_dict(blob["model"])
            state.optimizer.load_state_dict(blob["optimizer"])
            if state.ema is not None and blob["ema"] is not None:
                state.ema.module.load_state_dict(blob["ema"])
                state.ema.n_averaged.copy_(blob["ema_n_averaged"])
        except (ElasticTokError, torch.OutOfMemoryError):  # already one line; or a good checkpoint, no memory
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:  # any layout
            raise ElasticTokError(f"{self.path}: a damaged training checkpoint ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})") from None
        if not all(torch.isfinite(p).all() for p in state.model.parameters()):
            raise ElasticTokError(f"{self.path}: weights that are NaN or Inf; the run diverged before this "
                                  "checkpoint, so resuming it would train nothing")


class DistributedCheckpoint:
    """``DIR/model_optim`` (torch.distributed.checkpoint shards) plus ``DIR/trainer.json``.

    Written into ``DIR.tmp`` and renamed by rank 0 after every rank has finished, so a crash
    never leaves half a checkpoint where ``DIR`` was.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.tmp = self.directory.with_name(self.directory.name + ".tmp")  # the save being written
        self.old = self.directory.with_name(self.directory.name + ".old")  # the one it replaces

    def exists(self) -> bool:
        return (self.directory / "trainer.json").is_file()

    def finish_interrupted_save(self, world: World) -> None:
        """Rank 0 completes a save that stopped between its renames; the others wait. Without ``DIR``
        the newest whole checkpoint is ``DIR.tmp`` (its trainer.json is written last), else ``DIR.old``."""
        if world.main:
            if not self.directory.exists():
                whole = [d for d in (self.tmp, self.old) if (d / "trainer.json").is_file()]
                if whole:
                    os.replace(whole[0], self.directory)
            if self.directory.exists():
                shutil.rmtree(self.old, ignore_errors=True)  # the next save renames DIR onto it
        dist.barrier()

    def _write(self, model, optimizer, trainer_state: dict, world: World) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        if world.main and self.tmp.exists():
            shutil.rmtree(self.tmp)
        dist.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(self.tmp / "model_optim"))
        dist.barrier()
        if world.main:
            with atomic_path(self.tmp / "trainer.json") as trainer_json:  # last, and whole: it marks DIR.tmp done
                trainer_json.write_text(json.dumps({**trainer_state, "world_size": world.size}))
            shutil.rmtree(self.old, ignore_errors=True)
            with interrupts_held():  # Ctrl-C between the renames would leave no DIR (finish_interrupted_save)
                if self.directory.exists():
                    os.replace(self.directory, self.old)
                os.replace(self.tmp, self.directory)
            shutil.rmtree(self.old, ignore_errors=True)
        dist.barrier()

    def _read(self, model, optimizer) -> dict:
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

    def save(self, state: TrainState) -> None:
        self._write(state.net, state.optimizer, state.trainer_fields(), state.world)

    def load(self, state: TrainState) -> None:
        state.restore_trainer_fields(self._read(state.net, state.optimizer), self.directory)
