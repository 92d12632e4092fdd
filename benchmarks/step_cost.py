"""What one training step of each proxy-ladder row costs, measured side by side in one process.

    python benchmarks/step_cost.py                       # every row of configs/ablation/ladder.yaml
    python benchmarks/step_cost.py --rows elastic full   # some rows

Each row's model takes optimiser steps on one fixed batch of the row's shape (its batch size,
clip length and kept lengths); the rows take turns, round after round, so that whatever else the
machine does falls on all of them alike. Prints the median seconds per step and its ratio to the
first row: the ladder gives each row base_steps / ratio steps, so that every row has the same CPU time.
A row with ``full_length_first`` costs the blend of its full-length and elastic steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from elastictok.models.registry import model_class_for
from elastictok.training.config import TrainConfig
from elastictok.training.loop import build_optimizer
from elastictok.training.masks import KeepSampler


def step_timer(cfg: TrainConfig, full_length: bool):
    """A function that takes one optimiser step of ``cfg``'s model on a fixed batch and returns its seconds."""
    torch.manual_seed(0)
    c = cfg.model_config()
    model = model_class_for(c)(c)
    optimizer = build_optimizer(model, cfg)
    video = torch.rand(cfg.batch_size, cfg.n_blocks * c.frames_per_block, 3, *c.resolution) * 2 - 1
    if full_length:
        keep = torch.full((cfg.batch_size, cfg.n_blocks), c.tokens_per_block)
    else:
        sampler = KeepSampler(cfg.mask, c.min_tokens, c.tokens_per_block, cfg.mask_lengths, cfg.keep_distribution)
        keep = sampler(cfg.batch_size, cfg.n_blocks, torch.Generator().manual_seed(0))

    def step() -> float:
        started = time.perf_counter()
        model(video, keep).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ladder", default="configs/ablation/ladder.yaml")
    parser.add_argument("--rows", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ladder = yaml.safe_load(Path(args.ladder).read_text())
    names = args.rows or list(ladder["rows"])
    configs = {name: TrainConfig(**{**ladder["base"], **ladder["rows"][name]}) for name in names}
    timers = {}
    for name, cfg in configs.items():
        timers[name] = {"masked": step_timer(cfg, full_length=False)}
        if cfg.full_length_first:
            timers[name]["full"] = step_timer(cfg, full_length=True)
    seconds = {(name, part): [] for name, parts in timers.items() for part in parts}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, parts in timers.items():
            for part, step in parts.items():
                seconds[name, part].append(step())
    cost = {}
    for name, cfg in configs.items():
        masked = statistics.median(seconds[name, "masked"][1:])
        full = statistics.median(seconds[name, "full"][1:]) if cfg.full_length_first else masked
        cost[name] = cfg.full_length_first * full + (1 - cfg.full_length_first) * masked
    first = cost[names[0]]
    print(f"| row | s/step | x {names[0]} |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {cost[name]:.2f} | {cost[name] / first:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
