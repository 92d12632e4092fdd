"""Per-block quality scores on [-1, 1] videos (B, T, 3, H, W)."""

from __future__ import annotations

import torch
from einops import reduce
from torch import Tensor


def mse_per_block(recon: Tensor, target: Tensor, frames_per_block: int) -> Tensor:
    """(B, n_blocks) mean squared error of each block, recon clipped to [-1, 1] as in the original."""
    err = (recon.float().clamp(-1, 1) - target.float()).pow(2)
    return reduce(err, "b (n t) c h w -> b n", "mean", t=frames_per_block)


def psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR in dB for signals in [-1, 1] (peak-to-peak 2, so the same value as on [0, 1] images)."""
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


def psnr(recon: Tensor, target: Tensor) -> Tensor:
    """(B,) PSNR of each sample over all its frames."""
    err = (recon.float().clamp(-1, 1) - target.float()).pow(2).flatten(1).mean(1)
    return psnr_from_mse(err)
