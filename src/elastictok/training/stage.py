"""Training a latent input stage alone: the causal video autoencoder of ``models.flextok.latent``, with MSE.

It reads the trainer's own data (``loop.training_data``: a folder of media or WebDataset shards, clips of whole
blocks in [-1, 1]) and follows the trainer's schedule (``loop.lr_factor``: warmup, then cosine over ``steps``
or ``max_minutes``) with AdamW, all from one ``TrainConfig``; then sets the stage's latent ``scale`` from
the data and writes its folder (``stage.safetensors`` + ``stage.json``), which a training config's
``stage_from`` loads. ``scripts/train_latent_stage.py`` runs it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
from einops import rearrange

from ..errors import ElasticTokError
from ..metrics.quality import psnr, psnr_from_mse
from ..models.flextok.latent import WEIGHTS_NAME, LatentStage
from ..utils.runtime import resolve_device
from .config import TrainConfig
from .datasets import MediaCollection, eval_clips
from .distributed import World
from .loop import TrainingClock, TrainingData, lr_factor, training_data
from .optimizers import adamw

log = logging.getLogger(__name__)
SCALE_BATCHES = 8  # training batches the latent scale is measured on


@dataclass
class StageRun:
    """What training a stage cost and gave; ``stage.json`` records it as ``training``."""

    steps: int
    minutes: float
    device: str
    mse: float  # mean training MSE over the last ``log_every`` steps (NaN if none ran)
    scale: float  # 1 / the raw latents' standard deviation
    held_out_psnr: float | None  # mean PSNR of the reconstructions of cfg.eval_data's one-block clips


def train_stage(stage: LatentStage, cfg: TrainConfig, out_dir: str | Path) -> StageRun:
    """Train ``stage`` on ``cfg``'s data and schedule (one process), set its scale, and save it into ``out_dir``."""
    out_dir = Path(out_dir)
    if (out_dir / WEIGHTS_NAME).exists():  # never train over a stage unasked
        raise ElasticTokError(f"{out_dir} holds a latent stage already; set another output folder")
    device = torch.device(resolve_device(None if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    stage.to(device).train().requires_grad_(True)
    c = cfg.model_config()
    # the data runs SCALE_BATCHES past the last step: the scale is measured on batches after training's
    batches = _blocks(training_data(replace(cfg, steps=cfg.steps + SCALE_BATCHES), c, World(), 0), c.frames_per_block)
    clock = TrainingClock(cpu=cfg.clock == "cpu")
    steps, mse = _optimise(stage, cfg, batches, device, clock)
    stage.eval().requires_grad_(False)
    scale = stage.set_scale([next(batches).to(device) for _ in range(SCALE_BATCHES)])
    held_out = None
    if cfg.eval_data:
        media = MediaCollection.load(cfg.eval_data, short_side=min(c.resolution))
        held_out = stage_psnr(stage, eval_clips(media, c.resolution, c.frames_per_block), device)
    run = StageRun(steps=steps, minutes=round(clock.seconds / 60, 2), device=device.type, mse=mse, scale=scale,
                   held_out_psnr=held_out)
    stage.save(out_dir, training=asdict(run))
    return run


def _blocks(data: TrainingData, frames_per_block: int) -> Iterator[torch.Tensor]:
    """The trainer's batches as single blocks (B*n, frames_per_block, 3, H, W): the stage codes each on its own."""
    for batch in data.batches:
        video = batch[0] if data.from_shards else batch  # shards give (video, undecodable samples so far)
        yield rearrange(video, "b (n f) c h w -> (b n) f c h w", f=frames_per_block)


def _optimise(stage: LatentStage, cfg: TrainConfig, batches: Iterator[torch.Tensor], device: torch.device,
              clock: TrainingClock) -> tuple[int, float]:
    """AdamW steps until ``cfg.steps`` or ``cfg.max_minutes``; returns the steps taken and the mean MSE of the
    last ``log_every`` of them."""
    optimizer = adamw(list(stage.parameters()), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, clock.seconds))
    world, step, recent = World(), 0, deque(maxlen=cfg.log_every)
    started = time.monotonic()
    while step < cfg.steps and not (cfg.max_minutes is not None and clock.tick(world) > 60 * cfg.max_minutes):
        video = next(batches).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            mse, _ = stage.loss(video)
        mse.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        recent.append(mse.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = sum(recent) / len(recent)
            log.info("step %d  mse %.5f  psnr %.2f dB  lr %.2e  %.0f s", step, mean,
                     psnr_from_mse(torch.tensor(mean)).item(), scheduler.get_last_lr()[0], time.monotonic() - started)
    clock.tick(world)
    return step, sum(recent) / len(recent) if recent else float("nan")


@torch.no_grad()
def stage_psnr(stage: LatentStage, samples: list[torch.Tensor], device: torch.device | str = "cpu",
               batch_size: int = 16) -> float:
    """Mean PSNR of the stage's reconstructions of one-block clips (T, 3, H, W) in [-1, 1]."""
    if not samples:
        raise ElasticTokError("no held-out clips to measure the latent stage on")
    scores = []
    for i in range(0, len(samples), batch_size):
        batch = torch.stack(samples[i:i + batch_size]).to(device)
        scores.append(psnr(stage.decode(stage.encode(batch)), batch))
    return torch.cat(scores).mean().item()
