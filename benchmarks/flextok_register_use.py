"""Does a FlexTok decoder learn to read its registers? Training-signal variants side by side.

    python benchmarks/flextok_register_use.py [--steps 800] [--data data/corpus2/heldout]

Each variant trains the ``flextok-micro`` preset from the same seed on the same four one-block clips
(the first frames of four different videos, so nothing but the registers tells them apart at t = 1),
no classifier-free-guidance dropout, and prints the one-step estimate's PSNR (t = 1: pure noise in,
so only the registers can lift it above the mean frame) with k = 0 (the null condition), 1 and all
registers. Learned patch positions only, as when its results were recorded (docs/results/README.md). A
memorisation test: it says whether the signal reaches the registers, not how well a
model generalises.
"""

from __future__ import annotations

import argparse
import time
from itertools import islice
from pathlib import Path

import torch

from elastictok.media.io import VideoReader
from elastictok.media.transforms import fit_to_resolution, to_model
from elastictok.metrics.quality import psnr_from_mse
from elastictok.models.flextok import FlexTok, FlexTokConfig

CLIPS = ("vtest_tail.mp4", "Megamind.avi", "kivy_cityCC0.mp4", "mecavideo_balle-jbart.mp4")
VARIANTS = {  # name -> FlexTokConfig overrides
    "velocity loss, time_mean 0.8 (preset)": {},
    "+ x0_loss_weight 1": {"x0_loss_weight": 1.0},
    "time_mean 2.0": {"time_mean": 2.0},
    "pure_noise_fraction 0.25": {"pure_noise_fraction": 0.25},
}


def one_step_psnr(model: FlexTok, video: torch.Tensor, k: int) -> float:
    model.eval()
    torch.manual_seed(1)  # the same noise for every variant and k
    with torch.no_grad():
        recon = model(video, k).recon
    return float(psnr_from_mse((recon - video).pow(2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/corpus2/heldout"))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    base = FlexTokConfig.from_preset("flextok-micro", cfg_dropout=0.0, patch_position="learned")
    fpb = base.frames_per_block
    firsts = [torch.stack(list(islice(VideoReader(args.data / name), fpb))) for name in CLIPS]  # the first frames
    video = torch.stack([to_model(fit_to_resolution(f, base.resolution)) for f in firsts])  # (4, fpb, 3, H, W)
    r = base.registers
    print(f"flextok-micro, {len(CLIPS)} one-block clips, {args.steps} steps, lr {args.lr}, {torch.get_num_threads()} "
          "threads\n")
    print(f"{'variant':<40} {'k=0 dB':>7} {'k=1 dB':>7} {f'k={r} dB':>7} {'seconds':>8}")
    for name, overrides in VARIANTS.items():
        torch.manual_seed(0)
        config = FlexTokConfig.from_preset("flextok-micro", cfg_dropout=0.0, patch_position="learned", **overrides)
        model = FlexTok(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        started = time.perf_counter()
        for _ in range(args.steps):
            model.train()
            loss = model(video).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - started
        print(f"{name:<40} {one_step_psnr(model, video, 0):>7.2f} {one_step_psnr(model, video, 1):>7.2f} "
              f"{one_step_psnr(model, video, r):>7.2f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
