"""Training: Algorithm 1 of the paper (random tail-token masking), resumable bit for bit.

``elastictok train --config configs/tiny.yaml`` runs ``train(TrainConfig.from_yaml(...))``. A run
directory holds ``checkpoints/last.pt`` (or ``checkpoints/last/`` under torchrun; see
``checkpoint.py``), ``model/`` (the final weights as ``save_pretrained``), ``log.csv`` and ``tb/``.
``train`` is a sequence of small steps: build the state, resume it, make the data, then per step
``_train_step``, ``_report``, ``_maybe_evaluate`` and a checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import yaml

from ..errors import ElasticTokError
from ..metrics.quality import psnr, psnr_from_mse
from ..models.base import tokens_at_share
from ..models.registry import model_class_for
from ..utils.fileio import atomic_path
from ..utils.console import progress_bar
from ..utils.runtime import warn_if_slow_bf16
from ..utils.seeds import stable_seed
from .checkpoint import Checkpoint, FileCheckpoint, TrainState, checkpoint_for
from .config import TrainConfig
from .datasets import MediaCollection, TrainBatches, eval_clips
from .distributed import World, full_state_dict, setup, wrap
from .masks import KeepSampler
from .optimizers import build_optimizer
from .shards import ShardBatches, list_shards, raise_worker_errors

log = logging.getLogger(__name__)

CSV_FIELDS = ["step", "loss", "mse", "kl", "lpips", "psnr", "lr", "frames_per_s", "skipped_files"]


class TrainingClock:
    """Seconds spent training, across resumes: what a ``max_minutes`` budget is measured against.

    ``cpu``: this process's CPU seconds (all its threads; not DataLoader workers') instead of wall seconds,
    so that a run sharing its cores with other work gets the compute of a run alone, and runs side by
    side compare at equal CPU time. ``seconds`` is the reading of the last ``tick``, the same on every
    rank (their maximum), so that a schedule that follows the clock gives every rank the same learning rate.
    """

    def __init__(self, cpu: bool = False) -> None:
        self.now = time.process_time if cpu else time.monotonic
        self.before, self.started, self.seconds = 0.0, self.now(), 0.0

    def restore(self, seconds: float) -> None:
        """Continue from ``seconds`` already trained (a resumed run)."""
        self.before, self.started, self.seconds = seconds, self.now(), seconds

    def tick(self, world: World) -> float:
        reading = self.before + self.now() - self.started
        if world.distributed:
            packed = torch.tensor([reading])
            dist.all_reduce(packed, op=dist.ReduceOp.MAX)
            reading = packed.item()
        self.seconds = reading
        return reading


def run_progress(step: int, cfg: TrainConfig, seconds: float = 0.0) -> float:
    """How far through its budget a run is, in [0, 1]: steps done, or minutes spent if ``max_minutes`` ends it first.

    With a time budget, the schedule (learning rate, ``full_length_first``) follows the clock, so a run
    stopped by ``max_minutes`` has decayed its learning rate like one that ran all its steps.
    """
    by_steps = step / cfg.steps
    by_time = seconds / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0
    return min(1.0, max(by_steps, by_time))


def lr_factor(step: int, cfg: TrainConfig, seconds: float = 0.0) -> float:
    """Linear warmup, then constant or cosine down to ``min_lr_ratio`` over the rest of the budget."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    by_steps = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    by_time = seconds / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0
    after_warmup = min(1.0, max(by_steps, by_time))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * after_warmup))


def load_init_weights(model: torch.nn.Module, source: str) -> None:
    """Progressive training: start from another run's checkpoint or a ``save_pretrained`` directory."""
    path = Path(source)
    checkpoint = FileCheckpoint(path / "checkpoints" / "last.pt")
    if checkpoint.exists():
        state = checkpoint.read()
        model.load_state_dict(state["ema"] or state["model"])
    else:
        model.load_state_dict(type(model).from_pretrained(path).state_dict())


@torch.no_grad()
def evaluate(model: torch.nn.Module, samples: list[torch.Tensor], fractions: list[float], device: torch.device,
             bf16: bool, batch_size: int = 16) -> dict[float, float]:
    """Mean PSNR over held-out samples at each keep fraction of Mmax (clamped to [Mmin, Mmax])."""
    bare = getattr(model, "module", model)  # a DDP wrapper keeps the model in .module
    c = bare.config
    was_training = model.training
    model.eval()
    with _whole_sequences(bare):
        results = _psnr_at_fractions(model, samples, fractions, device, bf16, batch_size, c)
    model.train(was_training)
    return results


@contextlib.contextmanager
def _whole_sequences(model) -> Iterator[None]:
    """Run a sequence-parallel model on whole samples on every rank for a while."""
    saved, model.sequence_group = model.sequence_group, None
    try:
        yield
    finally:
        model.sequence_group = saved


def _psnr_at_fractions(model, samples, fractions, device, bf16, batch_size, c) -> dict[float, float]:
    results = {}
    for fraction in fractions:
        keep = tokens_at_share(c, fraction)
        scores = []
        for i in range(0, len(samples), batch_size):
            batch = torch.stack(samples[i:i + batch_size]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(batch, keep)
                scores.append(psnr(out.recon, batch))  # inside: a FlexTok decodes recon when it is read
        results[fraction] = torch.cat(scores).mean().item()
    return results


class RunLog:
    """CSV, held-out (``eval.jsonl``) and TensorBoard logs of one run; resuming drops rows past the checkpoint
    (a run killed after it logged them repeats those steps)."""

    def __init__(self, out_dir: Path, start_step: int):
        self.eval_path = out_dir / "eval.jsonl"
        if self.eval_path.exists():
            kept = _eval_lines_until(self.eval_path, start_step)
            with atomic_path(self.eval_path) as tmp:
                tmp.write_text("".join(kept))
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

    def write_eval(self, step: int, scores: dict[float, float]) -> None:
        with self.eval_path.open("a") as f:
            f.write(json.dumps({"step": step, "psnr": {str(k): v for k, v in scores.items()}}) + "\n")

    def close(self) -> None:
        self.tb.close()


def _eval_lines_until(path: Path, step: int) -> list[str]:
    """The lines of ``eval.jsonl`` for steps up to ``step``; a line that a kill cut short is dropped."""
    kept = []
    for line in path.read_text(errors="replace").splitlines() if step else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and type(record.get("step")) is int and record["step"] <= step:
            kept.append(line + "\n")
    return kept


# ---- the run, step by step --------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """Training batches and what the loop needs to know about where they come from."""

    batches: Iterator
    from_shards: bool  # batches are (video, undecodable samples so far) pairs, one rank's share each
    data_ranks: int  # ranks that split the data (1 under sequence parallelism: one batch, split by tokens)
    skipped_by_worker: dict[int, int]  # undecodable samples, as each worker last reported


def _check_layout(cfg: TrainConfig, world: World) -> None:
    if cfg.batch_size % world.size:
        raise ElasticTokError(f"batch_size {cfg.batch_size} does not split over {world.size} processes")
    if world.distributed and cfg.ema_decay:
        raise ElasticTokError("ema_decay is not supported with multi-process training yet")
    if world.distributed and cfg.optimizer == "muon":
        raise ElasticTokError("optimizer: muon trains in one process only; under torchrun use optimizer: adamw")
    if cfg.optimizer == "muon" and getattr(torch.optim, "Muon", None) is None:
        raise ElasticTokError(f"optimizer: muon needs torch 2.9 or later (torch.optim.Muon); this is torch "
                              f"{torch.__version__}")
    if cfg.sequence_parallel and (not world.distributed or cfg.distributed != "ddp"):
        raise ElasticTokError("sequence_parallel needs torchrun and distributed: ddp")
    c = cfg.model_config()
    clips = cfg.batch_size if cfg.sequence_parallel else cfg.batch_size // world.size  # what one process holds
    batch_bytes = 4 * 3 * clips * cfg.n_blocks * c.frames_per_block * c.resolution[0] * c.resolution[1]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    if memory and batch_bytes > memory // 4:  # activations take many times the input: refuse it before work
        raise ElasticTokError(f"a batch of {clips} clips of {cfg.n_blocks} blocks per process is "
                              f"{batch_bytes / 2**30:.1f} GiB of pixels before any activation, on a machine of "
                              f"{memory / 2**30:.0f} GiB; "
                              "lower batch_size (grad_accum keeps the batch) or n_blocks")


def _build_state(cfg: TrainConfig, world: World, device: torch.device, fresh: bool) -> TrainState:
    """Model (the same initial weights on every rank; a ``fresh`` run's from ``init_from`` or with the input
    stage of ``stage_from`` where set), its distributed form, optimiser, schedule and EMA."""
    torch.manual_seed(cfg.seed)
    config = cfg.model_config()
    model = model_class_for(config)(config).to(device)
    if fresh and cfg.init_from:
        load_init_weights(model, cfg.init_from)
    if fresh and cfg.stage_from:
        model.load_input_stage(cfg.stage_from)
    net = wrap(model, cfg.distributed, cfg.bf16, device) if world.distributed else model
    if cfg.sequence_parallel:
        if not model.supports_sequence_parallel:
            raise ElasticTokError(f"sequence_parallel is not supported by {model.display_name}")
        model.sequence_group = dist.group.WORLD
        for blocks in {1, cfg.n_blocks}:  # an image batch, a video clip: refused now, not at its first batch
            model.check_sequence_split(blocks * config.tokens_per_block, world.size)
    optimizer = build_optimizer(model, cfg)  # net's parameters: DDP wraps them, FSDP2 shards them in place
    clock = TrainingClock(cpu=cfg.clock == "cpu")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, clock.seconds))
    ema = None
    if cfg.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay))
    return TrainState(model=model, net=net, optimizer=optimizer, scheduler=scheduler, ema=ema, world=world, cfg=cfg,
                      clock=clock)


def _check_data(paths: list[str]) -> None:
    """Training data that is there, or one line saying what belongs in ``data``."""
    if not paths:
        raise ElasticTokError("no training data: give --data DIR (or data: in the config), folders of images and videos")
    missing = [path for path in paths if not os.path.lexists(path)]
    if missing:
        raise ElasticTokError(f"data: {missing[0]}: no such file or folder; point --data (or data: in the config) at "
                              "your images and videos (the configs in configs/ read the corpus that "
                              "`python scripts/build_corpus.py data/corpus` builds)")


def training_data(cfg: TrainConfig, c: Any, world: World, start_step: int) -> TrainingData:
    """WebDataset shards (every rank streams its own slice) or a folder of media in memory (every rank
    makes the global batch and takes its rows); both resume at batch ``start_step * grad_accum``."""
    _check_data(cfg.data)
    shards = list_shards(cfg.data)
    data_ranks = 1 if cfg.sequence_parallel else world.size
    if shards:
        batches = ShardBatches(shards, c.resolution, c.frames_per_block, cfg.n_blocks, cfg.batch_size // data_ranks,
                               cfg.image_fraction, cfg.seed, start_batch=start_step * cfg.grad_accum,
                               rank=world.rank if data_ranks > 1 else 0, world_size=data_ranks)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.num_workers)
        return TrainingData(raise_worker_errors(iter(loader)), True, data_ranks, {})
    media = MediaCollection.load(cfg.data, short_side=2 * min(c.resolution), fps=cfg.fps)
    batches = TrainBatches(media, c.resolution, c.frames_per_block, cfg.n_blocks, cfg.batch_size,
                           cfg.image_fraction, cfg.seed, length=cfg.steps * cfg.grad_accum)
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start_step * cfg.grad_accum, len(batches)),
        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    return TrainingData(iter(loader), False, data_ranks, {0: len(media.skipped)})


def _micro_batch(state: TrainState, data: TrainingData, sampler: KeepSampler, index: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Global micro-batch ``index``: this rank's video (B, T, 3, H, W) and keep counts (B, n_blocks)."""
    cfg, world, c = state.cfg, state.world, state.model.config
    video = next(data.batches)
    if data.from_shards:  # (batch, undecodable samples so far) from the worker that made batch `index`
        video, data.skipped_by_worker[index % max(1, cfg.num_workers)] = video
    n_blocks = video.shape[1] // c.frames_per_block
    if run_progress(state.step, cfg, state.clock.seconds) < cfg.full_length_first:  # one length: every token
        keep = torch.full((video.shape[0], n_blocks), c.tokens_per_block, dtype=torch.long)
    else:
        keep = sampler(video.shape[0], n_blocks, torch.Generator().manual_seed(stable_seed(cfg.seed, "keep", index)))
    if not data.from_shards and data.data_ranks > 1:  # this rank's contiguous share of the global batch
        share = video.shape[0] // world.size
        video = video[world.rank * share:(world.rank + 1) * share]
        keep = keep[..., world.rank * share:(world.rank + 1) * share, :]  # (B, n) or (L, B, n)
    return video, keep


def _train_step(state: TrainState, data: TrainingData, sampler: KeepSampler, lpips, device: torch.device
                ) -> tuple[dict[str, float], int]:
    """One optimiser step over ``grad_accum`` micro-batches; returns the mean losses and frames seen."""
    cfg = state.cfg
    totals = {"loss": 0.0, "mse": 0.0, "kl": 0.0, "lpips": 0.0, "psnr": 0.0}
    frames = 0
    for micro in range(cfg.grad_accum):
        index = state.step * cfg.grad_accum + micro
        video, keep = _micro_batch(state, data, sampler, index)
        video = video.to(device, non_blocking=True)
        # Sampling noise (VAE) depends on (seed, batch, rank) only: resumable without RNG state.
        torch.manual_seed(stable_seed(cfg.seed, "noise", index, state.world.rank) % 2**63)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = state.net(video, keep.to(device))
            loss = out.loss
            if lpips is not None:
                frame = torch.randint(video.shape[1], (), generator=torch.Generator().manual_seed(
                    stable_seed(cfg.seed, "lpips", index))).item()
                perceptual = lpips(out.recon[:, frame].float(), video[:, frame].float())
                loss = loss + cfg.lpips_weight * perceptual
                totals["lpips"] += perceptual.item() / cfg.grad_accum
        (loss / cfg.grad_accum).backward()
        for key, value in (("loss", loss), ("mse", out.mse), ("kl", out.kl), ("psnr", psnr_from_mse(out.mse.detach()))):
            totals[key] += value.item() / cfg.grad_accum
        frames += video.shape[0] * video.shape[1] * data.data_ranks
    _optimizer_step(state)
    return totals, frames


def _optimizer_step(state: TrainState) -> None:
    torch.nn.utils.clip_grad_norm_(state.net.parameters(), state.cfg.grad_clip)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.step += 1


def _mean_over_ranks(totals: dict[str, float], world: World) -> dict[str, float]:
    if not world.distributed:
        return totals
    keys = ("loss", "mse", "kl", "lpips", "psnr")
    packed = torch.tensor([totals[k] for k in keys])
    dist.all_reduce(packed)
    return {**totals, **dict(zip(keys, (packed / world.size).tolist()))}


def _any_rank(flag: bool, world: World) -> bool:
    """True on every rank when ``flag`` is true on any (so that every rank stops together)."""
    if not world.distributed:
        return flag
    packed = torch.tensor([float(flag)])
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    return bool(packed.item())


def _maybe_evaluate(state: TrainState, samples: list, device, run_log: RunLog | None, bar, last: bool) -> None:
    """Held-out PSNR at each keep fraction, every ``eval_every`` steps and at the end."""
    cfg, step = state.cfg, state.step
    if not samples or not (step % cfg.eval_every == 0 or step == cfg.steps or last):
        return
    scores = evaluate(state.ema.module if state.ema is not None else state.net, samples, cfg.eval_keep_fractions,
                      device, cfg.bf16)
    if run_log:
        for fraction, value in scores.items():
            run_log.tb.add_scalar(f"eval/psnr_keep_{fraction:.4g}", value, step)
        line = "  ".join(f"keep {f:.4g}: {v:.2f} dB" for f, v in scores.items())
        bar.write(f"step {step} held-out PSNR  {line}")
        run_log.write_eval(step, scores)


def _resume(state: TrainState, checkpoint: Checkpoint, out_dir: Path) -> None:
    if checkpoint.exists():
        checkpoint.load(state)
    log.info("resuming from step %d" if state.step else "no checkpoint in %s: starting from scratch",
             state.step or out_dir)


def _save_final(state: TrainState, out_dir: Path, run_log: RunLog | None) -> None:
    """The trained (EMA, if any) weights as ``out_dir/model``, written by rank 0, with what training cost
    (steps, and minutes of the training clock summed over processes)."""
    final = full_state_dict(state.ema.module if state.ema is not None else state.net)
    if run_log:
        run_log.close()
        trained = type(state.model)(state.model.config)
        trained.load_state_dict(final)
        device = next(state.model.parameters()).device.type
        record = {"steps": state.step, "minutes": round(state.clock.seconds * state.world.size / 60, 2),
                  "clock": state.cfg.clock, "device": device, "processes": state.world.size}
        trained.save_pretrained(out_dir / "model", training=record)


def _lpips(cfg: TrainConfig, device: torch.device):
    if not cfg.lpips_weights:
        return None
    from ..metrics.perceptual import LPIPS
    return LPIPS.from_file(cfg.lpips_weights).to(device)


def _keep_sampler(cfg: TrainConfig, model: torch.nn.Module):
    """Kept tokens per block for each step: the family's own sampler for the mask mode, else the mask's."""
    c = model.config
    own = model.keep_sampler(cfg.mask)
    if own is not None:
        return own
    return KeepSampler(cfg.mask, c.min_tokens, c.tokens_per_block, cfg.mask_lengths, cfg.keep_distribution)


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train and return the run directory; ``resume`` continues from the run's last checkpoint.

    Under torchrun, every process trains its share of each global batch (DDP or FSDP2, by
    ``cfg.distributed``) and checkpoints go through torch.distributed.checkpoint.
    """
    out_dir = Path(cfg.out_dir)
    world, device = setup(cfg.device)
    _check_layout(cfg, world)
    if cfg.bf16 and world.main:
        warn_if_slow_bf16(device.type)
    checkpoint = checkpoint_for(out_dir, world)
    if not resume and (checkpoint.exists() or (out_dir / "model").exists()):  # never train over a run unasked
        raise ElasticTokError(f"{out_dir} holds a run already: continue it with --resume (resume=True), or set "
                              "another out_dir")
    resuming = resume and checkpoint.exists()
    state = _build_state(cfg, world, device, fresh=not resuming)
    lpips = _lpips(cfg, device)
    if resume:
        _resume(state, checkpoint, out_dir)
    c = state.model.config
    data = training_data(cfg, c, world, state.step)
    held_out = MediaCollection.load(cfg.eval_data, short_side=min(c.resolution)) if cfg.eval_data else None
    eval_samples = eval_clips(held_out, c.resolution, c.frames_per_block) if held_out else []
    run_log = RunLog(out_dir, state.step) if world.main else None
    if world.main:
        (out_dir / "train_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    _run(state, data, _keep_sampler(cfg, state.model), lpips, device, eval_samples, run_log, out_dir, checkpoint)
    _save_final(state, out_dir, run_log)
    return out_dir


def _last_step(step: int, cfg: TrainConfig, seconds: float) -> int:
    """The step the run will stop at: ``steps`` or ``stop_at``, or earlier where ``max_minutes`` runs out first
    at the pace so far."""
    last = min(cfg.steps, cfg.stop_at or cfg.steps)
    if not cfg.max_minutes or not step or seconds <= 0:
        return last
    return max(step, min(last, round(step * 60 * cfg.max_minutes / seconds)))


def _run(state: TrainState, data: TrainingData, sampler: KeepSampler, lpips, device, eval_samples: list,
         run_log: RunLog | None, out_dir: Path, checkpoint: Checkpoint) -> None:
    """Steps until ``cfg.steps``, ``stop_at`` or ``max_minutes``: log, evaluate and checkpoint as configured."""
    cfg, world = state.cfg, state.world
    state.net.train()
    state.clock.restore(state.clock.seconds)  # loading data and the held-out clips is not training time
    started, frames_seen = time.monotonic(), 0
    bar = progress_bar(total=_last_step(state.step, cfg, state.clock.seconds), initial=state.step, desc="train",
                       show=cfg.progress and world.main, dynamic_ncols=True)
    while state.step < cfg.steps:
        state.clock.tick(world)
        totals, frames = _train_step(state, data, sampler, lpips, device)
        frames_seen += frames
        totals = _mean_over_ranks(totals, world)
        elapsed = time.monotonic() - started
        totals.update(lr=state.scheduler.get_last_lr()[0], frames_per_s=frames_seen / max(elapsed, 1e-9),
                      skipped_files=sum(data.skipped_by_worker.values()))
        bar.total = _last_step(state.step, cfg, state.clock.seconds)  # the ETA a time budget gives
        bar.update(1)
        bar.set_postfix(loss=f"{totals['loss']:.4f}", psnr=f"{totals['psnr']:.2f}", fps=f"{totals['frames_per_s']:.0f}")
        step = state.step
        if run_log and (step % cfg.log_every == 0 or step == cfg.steps):
            run_log.write(step, totals)
        spent = state.clock.tick(world)
        out_of_time = _any_rank(cfg.max_minutes is not None and spent > 60 * cfg.max_minutes
                                or cfg.stop_at is not None and step >= cfg.stop_at, world)
        _maybe_evaluate(state, eval_samples, device, run_log, bar, out_of_time)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            checkpoint.save(state)
        if out_of_time:
            bar.write(f"stopping at step {step} (max_minutes {cfg.max_minutes}, stop_at {cfg.stop_at})")
            break
    bar.close()
