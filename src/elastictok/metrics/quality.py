"""Quality scores on [-1, 1] videos (B, T, 3, H, W): per block, per sample, and the named block metrics.

``METRICS`` is where a new metric plugs in: a function ``(recon, original) -> (B,)`` scoring one
block per row, and whether higher is better. Targets (``elastictok.tokenization.targets``) and the
evaluation look metrics up by name here.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange, reduce
from torch import Tensor

# (recon, original) -> (B,) score per block; both are (B, frames_per_block, 3, H, W) in [-1, 1].
BlockMetric = Callable[[Tensor, Tensor], Tensor]


def mse_per_block(recon: Tensor, target: Tensor, frames_per_block: int) -> Tensor:
    """(B, n_blocks) mean squared error of each block, recon clipped to [-1, 1] as in the original."""
    err = (recon.float().clamp(-1, 1) - target.float()).pow(2)
    return reduce(err, "b (n t) c h w -> b n", "mean", t=frames_per_block)


def psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR in dB for signals in [-1, 1] (peak-to-peak 2, so the same value as on [0, 1] images)."""
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


def mse_from_psnr(psnr_db: float) -> float:
    """The MSE of a PSNR in dB, the inverse of ``psnr_from_mse``."""
    return 4.0 / 10 ** (psnr_db / 10)


def psnr(recon: Tensor, target: Tensor) -> Tensor:
    """(B,) PSNR of each sample over all its frames."""
    err = (recon.float().clamp(-1, 1) - target.float()).pow(2).flatten(1).mean(1)
    return psnr_from_mse(err)


def high_frequency_energy(video: Tensor, band: float = 0.375) -> float:
    """Spectral energy of every frame and channel of ``video`` (..., H, W) at radius >= ``band`` of Nyquist
    (0.375: periods under about 5 pixels), summed, the video clipped to [-1, 1] first (what a viewer gets).
    A decode's over the source's says how much fine detail it keeps (under 1: blur) or invents (over 1: noise)."""
    spectrum = torch.fft.fft2(video.float().clamp(-1, 1)).abs().pow(2)
    h, w = video.shape[-2:]
    radius = torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2) / 0.5
    return float(spectrum[..., radius >= band].sum())


def block_mse(recon: Tensor, original: Tensor) -> Tensor:
    return mse_per_block(recon, original, recon.shape[1])[:, 0]


def block_psnr(recon: Tensor, original: Tensor) -> Tensor:
    return psnr_from_mse(block_mse(recon, original))


def block_ssim(recon: Tensor, original: Tensor) -> Tensor:
    """Mean SSIM over the frames of each block (Gaussian window 11, sigma 1.5), via torchmetrics."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    frames = recon.shape[1]
    a = rearrange(recon.float().clamp(-1, 1), "b t c h w -> (b t) c h w")
    b = rearrange(original.float(), "b t c h w -> (b t) c h w")
    kernel = min(11, a.shape[-1] - (1 - a.shape[-1] % 2), a.shape[-2] - (1 - a.shape[-2] % 2))
    per_frame = ssim(a, b, data_range=2.0, reduction="none", kernel_size=kernel)
    return per_frame.view(-1, frames).mean(1)


METRICS: dict[str, tuple[BlockMetric, bool]] = {  # name -> (metric, higher is better)
    "mse": (block_mse, False),
    "psnr": (block_psnr, True),
    "ssim": (block_ssim, True),
}
