"""Training: Algorithm 1 of the paper (random tail-token masking), resumable bit for bit.

``elastictok train --config configs/tiny.yaml`` runs ``train(TrainConfig.from_yaml(...))``. A run
directory holds ``checkpoints/last.pt`` (model, optimiser, scheduler, EMA, step, RNG and data
position), ``model/`` (the final weights as ``save_pretrained``), ``log.csv`` and ``tb/``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from .config import ElasticTokConfig
from .data import MediaCollection, TrainBatches, stable_seed, eval_clips
from .errors import ElasticTokError
from .fileio import atomic_path
from .masking import KeepSampler
from .shards import ShardBatches, list_shards
from .distributed import DistributedCheckpoint, full_state_dict, setup, wrap
from .metrics import psnr, psnr_from_mse
from .model import ElasticTok

log = logging.getLogger(__name__)

CSV_FIELDS = ["step", "loss", "mse", "kl", "lpips", "psnr", "lr", "frames_per_s", "skipped_files"]


@dataclass
class TrainConfig:
    model: str = "tiny"  # preset name
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)  # folders or files of images and videos
    eval_data: list[str] = field(default_factory=list)  # held out
    out_dir: str = "runs/tiny"
    steps: int = 1000
    max_minutes: float | None = None  # stop early (with a checkpoint) after this much wall time
    stop_at: int | None = None  # stop after this step (the schedule still spans `steps`), e.g. to match a run
    batch_size: int = 8  # video clips per micro-batch; image batches hold batch_size * n_blocks images
    grad_accum: int = 1
    n_blocks: int = 1  # context length in blocks for video clips
    image_fraction: float = 0.5  # share of batches made of images
    fps: float | None = None  # resample training videos to this rate (None: as recorded)
    mask: str = "elastic"  # elastic (FlexTok: its nested_dropout) | elastic+full | full | fixed:<fraction>
    mask_lengths: int = 1  # kept lengths decoded per sample and step (one encoder pass when it is unconditioned)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    schedule: str = "cosine"  # cosine | constant (after warmup)
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    bf16: bool = True
    ema_decay: float | None = None
    lpips_weights: str | None = None  # path to LPIPS-VGG weights; the term is off without it
    lpips_weight: float = 0.1
    eval_every: int = 200
    eval_keep_fractions: list[float] = field(default_factory=lambda: [1 / 16, 1 / 4, 1 / 2, 1.0])
    checkpoint_every: int = 200
    log_every: int = 10
    init_from: str | None = None  # progressive training: weights of another run or a model directory
    seed: int = 0
    distributed: str = "ddp"  # under torchrun: ddp | fsdp (FSDP2 fully_shard)
    sequence_parallel: bool = False  # under torchrun (ddp): every rank holds the batch, a shard of its tokens
    num_workers: int = 0
    device: str = "auto"
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ElasticTokError(f"{path}: cannot read training config ({exc})") from None
        if not isinstance(data, dict):
            raise ElasticTokError(f"{path}: a training config is a mapping of fields")
        data.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ElasticTokError(f"{path}: unknown training config fields: {', '.join(unknown)}")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)

    def model_config(self) -> ElasticTokConfig:
        """The preset with overrides; unless overridden, its inference window is the context trained on."""
        config_class, _ = model_family(self.model)
        return config_class.from_preset(self.model, **{"window": max(1, self.n_blocks - 1), **self.model_overrides})


def model_family(preset: str) -> tuple[type, type]:
    """(config class, model class) of the model family that owns a preset name: the one place the
    trainer dispatches on families (ElasticTok, FlexTok). The families' presets have distinct names."""
    from .models.flextok import PRESETS as FLEXTOK_PRESETS, FlexTok, FlexTokConfig

    return (FlexTokConfig, FlexTok) if preset in FLEXTOK_PRESETS else (ElasticTokConfig, ElasticTok)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then constant or cosine down to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not norms or the kept/masked embeddings)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def load_init_weights(model: ElasticTok, source: str) -> None:
    """Progressive training: start from another run's checkpoint or a ``save_pretrained`` directory."""
    path = Path(source)
    checkpoint = path / "checkpoints" / "last.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["ema"] or state["model"])
    else:
        model.load_state_dict(type(model).from_pretrained(path).state_dict())


@torch.no_grad()
def evaluate(model: ElasticTok, samples: list[torch.Tensor], fractions: list[float], device: torch.device,
             bf16: bool, batch_size: int = 16) -> dict[float, float]:
    """Mean PSNR over held-out samples at each keep fraction of Mmax (clamped to [Mmin, Mmax])."""
    c = getattr(model, "module", model).config  # a DDP wrapper keeps the model in .module
    was_training = model.training
    model.eval()
    results = {}
    for fraction in fractions:
        keep = min(c.tokens_per_block, max(c.min_tokens, round(fraction * c.tokens_per_block)))
        scores = []
        for i in range(0, len(samples), batch_size):
            batch = torch.stack(samples[i:i + batch_size]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(batch, keep)
            scores.append(psnr(out.recon, batch))
        results[fraction] = torch.cat(scores).mean().item()
    model.train(was_training)
    return results


class RunLog:
    """CSV and TensorBoard logs of one run; resuming drops rows past the checkpoint."""

    def __init__(self, out_dir: Path, start_step: int):
        self.csv_path = out_dir / "log.csv"
        rows = []
        if start_step and self.csv_path.exists():
            with self.csv_path.open() as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        with atomic_path(self.csv_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        from torch.utils.tensorboard import SummaryWriter
        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step or None)

    def write(self, step: int, values: dict[str, float]) -> None:
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore").writerow({"step": step, **values})
        for key, value in values.items():
            self.tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.tb.close()


def save_checkpoint(path: Path, model, optimizer, scheduler, ema, step: int, cfg: TrainConfig) -> None:
    """Single-process checkpoint: one file, loaded with ``weights_only=True``."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_n_averaged": ema.n_averaged if ema is not None else None,
        "step": step,
        "data_position": step * cfg.grad_accum,  # batches consumed; batch k is a pure function of k
        "train_config": json.dumps(dataclasses.asdict(cfg)),
        "model_config": json.dumps(model.config.to_dict()),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ElasticTokError(f"{path}: not a readable training checkpoint ({exc})") from None


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train and return the run directory; ``resume`` continues from the run's last checkpoint.

    Under torchrun, every process trains its share of each global batch (DDP or FSDP2, by
    ``cfg.distributed``) and checkpoints go through torch.distributed.checkpoint.
    """
    out_dir = Path(cfg.out_dir)
    world, device = setup(cfg.device)
    distributed = world.distributed
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    dist_ckpt = DistributedCheckpoint(out_dir / "checkpoints" / "last")
    has_checkpoint = dist_ckpt.exists() if distributed else ckpt_path.exists()
    if cfg.batch_size % world.size:
        raise ElasticTokError(f"batch_size {cfg.batch_size} does not split over {world.size} processes")
    if distributed and cfg.ema_decay:
        raise ElasticTokError("ema_decay is not supported with multi-process training yet")
    if cfg.sequence_parallel and (not distributed or cfg.distributed != "ddp"):
        raise ElasticTokError("sequence_parallel needs torchrun and distributed: ddp")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model_config = cfg.model_config()
    model = model_family(cfg.model)[1](model_config).to(device)
    if cfg.init_from and not (resume and has_checkpoint):
        load_init_weights(model, cfg.init_from)
    net = wrap(model, cfg.distributed, cfg.bf16, device) if distributed else model
    if cfg.sequence_parallel:
        model.sequence_group = dist.group.WORLD
    optimizer = build_optimizer(net, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    ema = None
    if cfg.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay))
    lpips = None
    if cfg.lpips_weights:
        from .perceptual import LPIPS
        lpips = LPIPS.from_file(cfg.lpips_weights).to(device)

    start_step = 0
    if resume and has_checkpoint and distributed:
        trainer_state = dist_ckpt.load(net, optimizer)
        if type(model_config).from_dict(trainer_state["model_config"]) != model_config:
            raise ElasticTokError(f"{dist_ckpt.directory} was written for a different model config; not resuming")
        scheduler.load_state_dict(trainer_state["scheduler"])
        start_step = trainer_state["step"]
    elif resume and has_checkpoint:
        state = load_checkpoint(ckpt_path)
        if type(model_config).from_dict(json.loads(state["model_config"])) != model_config:
            raise ElasticTokError(f"{ckpt_path} was written for a different model config; not resuming")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state["ema"] is not None:
            ema.module.load_state_dict(state["ema"])
            ema.n_averaged.copy_(state["ema_n_averaged"])
        start_step = state["step"]
    if resume:
        log.info("resuming from step %d" if start_step else "no checkpoint in %s: starting from scratch",
                 start_step or out_dir)

    def save(step: int) -> None:
        if distributed:
            dist_ckpt.save(net, optimizer, {"step": step, "data_position": step * cfg.grad_accum,
                                            "scheduler": scheduler.state_dict(),
                                            "model_config": model_config.to_dict()}, world)
        else:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, ema, step, cfg)

    c = model_config
    shards = list_shards(cfg.data)
    data_ranks = 1 if cfg.sequence_parallel else world.size  # sequence parallelism: one batch, split by tokens
    per_rank = cfg.batch_size // data_ranks
    if shards:  # WebDataset shards: every rank streams its own slice, resumable from the batch position
        batches = ShardBatches(shards, c.resolution, c.frames_per_block, cfg.n_blocks, per_rank,
                               cfg.image_fraction, cfg.seed, start_batch=start_step * cfg.grad_accum,
                               rank=world.rank if data_ranks > 1 else 0, world_size=data_ranks)
        rows = slice(None)
        skipped_by_worker: dict[int, int] = {}  # undecodable samples, as each worker last reported
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.num_workers)
    else:  # a folder of media in memory: every rank makes the global batch and takes its rows
        media = MediaCollection.load(cfg.data, short_side=2 * min(c.resolution), fps=cfg.fps)
        batches = TrainBatches(media, c.resolution, c.frames_per_block, cfg.n_blocks, cfg.batch_size,
                               cfg.image_fraction, cfg.seed, length=cfg.steps * cfg.grad_accum)
        rows = None  # decided per batch: image batches hold n_blocks times more rows
        skipped_by_worker = {0: len(media.skipped)}
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, sampler=range(start_step * cfg.grad_accum, len(batches)),
            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    held_out = MediaCollection.load(cfg.eval_data, short_side=min(c.resolution)) if cfg.eval_data else None
    eval_samples = eval_clips(held_out, c.resolution, c.frames_per_block) if held_out else []
    sampler = KeepSampler(cfg.mask, c.min_tokens, c.tokens_per_block, cfg.mask_lengths)
    if hasattr(model, "nested_dropout"):  # FlexTok: one kept length per sample, drawn by its nested dropout
        if cfg.mask_lengths != 1:
            raise ElasticTokError("mask_lengths > 1 is an ElasticTok option; FlexTok keeps one length per sample")
        sampler = model.nested_dropout if cfg.mask == "elastic" else sampler
    run_log = RunLog(out_dir, start_step) if world.main else None
    if world.main:
        (out_dir / "train_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

    net.train()
    started, frames_seen, step = time.monotonic(), 0, start_step
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", disable=not (cfg.progress and world.main),
               dynamic_ncols=True)
    batch_iter = iter(loader)
    while step < cfg.steps:
        totals = {"loss": 0.0, "mse": 0.0, "kl": 0.0, "lpips": 0.0, "psnr": 0.0}
        for micro in range(cfg.grad_accum):
            index = step * cfg.grad_accum + micro
            video = next(batch_iter)
            if shards:  # (batch, undecodable samples so far) from the worker that made batch `index`
                video, skipped_by_worker[index % max(1, cfg.num_workers)] = video
            keep = sampler(video.shape[0], video.shape[1] // c.frames_per_block,
                           torch.Generator().manual_seed(stable_seed(cfg.seed, "keep", index)))
            if rows is None and data_ranks > 1:  # this rank's contiguous share of the global batch
                share = video.shape[0] // world.size
                video = video[world.rank * share:(world.rank + 1) * share]
                keep = keep[..., world.rank * share:(world.rank + 1) * share, :]
            video = video.to(device, non_blocking=True)
            # Sampling noise (VAE) depends on (seed, batch, rank) only: resumable without RNG state.
            torch.manual_seed(stable_seed(cfg.seed, "noise", index, world.rank) % 2**63)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                out = net(video, keep.to(device))
                loss = out.loss
                if lpips is not None:
                    frame = torch.randint(video.shape[1], (), generator=torch.Generator().manual_seed(
                        stable_seed(cfg.seed, "lpips", index))).item()
                    perceptual = lpips(out.recon[:, frame].float(), video[:, frame].float())
                    loss = loss + cfg.lpips_weight * perceptual
                    totals["lpips"] += perceptual.item() / cfg.grad_accum
            (loss / cfg.grad_accum).backward()
            totals["loss"] += loss.item() / cfg.grad_accum
            totals["mse"] += out.mse.item() / cfg.grad_accum
            totals["kl"] += out.kl.item() / cfg.grad_accum
            totals["psnr"] += psnr_from_mse(out.mse.detach()).item() / cfg.grad_accum
            frames_seen += video.shape[0] * video.shape[1] * data_ranks
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        if distributed:  # report the mean over ranks
            packed = torch.tensor([totals[k] for k in ("loss", "mse", "kl", "lpips", "psnr")])
            dist.all_reduce(packed)
            totals.update(zip(("loss", "mse", "kl", "lpips", "psnr"), (packed / world.size).tolist()))
        elapsed = time.monotonic() - started
        totals.update(lr=scheduler.get_last_lr()[0], frames_per_s=frames_seen / max(elapsed, 1e-9),
                      skipped_files=sum(skipped_by_worker.values()))
        bar.update(1)
        bar.set_postfix(loss=f"{totals['loss']:.4f}", psnr=f"{totals['psnr']:.2f}", fps=f"{totals['frames_per_s']:.0f}")
        if run_log and (step % cfg.log_every == 0 or step == cfg.steps):
            run_log.write(step, totals)
        out_of_time = (cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
                       or cfg.stop_at is not None and step >= cfg.stop_at)
        if distributed:  # every rank must agree to stop
            flag = torch.tensor([float(out_of_time)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if eval_samples and (step % cfg.eval_every == 0 or step == cfg.steps or out_of_time):
            model.sequence_group = None  # evaluate whole samples on every rank
            scores = evaluate(ema.module if ema is not None else net, eval_samples, cfg.eval_keep_fractions,
                              device, cfg.bf16)
            model.sequence_group = dist.group.WORLD if cfg.sequence_parallel else None
            if run_log:
                for fraction, value in scores.items():
                    run_log.tb.add_scalar(f"eval/psnr_keep_{fraction:.4g}", value, step)
                line = "  ".join(f"keep {f:.4g}: {v:.2f} dB" for f, v in scores.items())
                bar.write(f"step {step} held-out PSNR  {line}")
                with (out_dir / "eval.jsonl").open("a") as f:
                    f.write(json.dumps({"step": step, "psnr": {str(k): v for k, v in scores.items()}}) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            save(step)
        if out_of_time:
            bar.write(f"stopping at step {step} (max_minutes {cfg.max_minutes}, stop_at {cfg.stop_at})")
            break
    bar.close()
    final = full_state_dict(ema.module if ema is not None else net)
    if run_log:
        run_log.close()
        trained = type(model)(model_config)
        trained.load_state_dict(final)
        trained.save_pretrained(out_dir / "model")
    return out_dir
