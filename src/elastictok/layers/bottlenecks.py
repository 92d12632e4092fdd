"""Bottlenecks between encoder and decoder: FSQ (discrete) and a diagonal Gaussian VAE (continuous).

Both take the encoder's pre-quantisation features z (B, N, P) and return latents (B, N, C).
They are computed in float32 even under bf16 autocast: rounding and log-variances are
precision-sensitive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class FSQ(nn.Module):
    """Finite scalar quantisation (Mentzer et al. 2023), numerically as in the original release.

    Each channel j is bounded to (levels[j] - 1) / 2 around zero, rounded with a
    straight-through estimator and divided by levels[j] // 2, so codes lie in [-1, 1].
    """

    def __init__(self, levels: tuple[int, ...], eps: float = 1e-3):
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.float32)
        half_l = (levels_t - 1) * (1 - eps) / 2
        offset = torch.where(levels_t % 2 == 1, 0.0, 0.5)
        self.register_buffer("half_l", half_l, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        # The original uses tan (not atanh) for the shift; kept for checkpoint parity.
        self.register_buffer("shift", torch.tan(offset / half_l), persistent=False)
        self.register_buffer("half_width", torch.div(levels_t, 2, rounding_mode="floor"), persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + tuple(levels[:-1]), dtype=torch.long), dim=0)
        self.register_buffer("basis", basis, persistent=False)
        self.levels = tuple(levels)
        self.codebook_size = math.prod(levels)

    def bound(self, z: Tensor) -> Tensor:
        return torch.tanh(z.float() + self.shift) * self.half_l - self.offset

    def forward(self, z: Tensor) -> Tensor:
        """Quantised codes (B, N, C) in [-1, 1], gradients passed straight through the rounding."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self.half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """(..., C) codes -> (...) integer indices in [0, codebook_size); channel 0 is the least significant digit."""
        digits = torch.round(codes.float() * self.half_width + self.half_width).long()
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Inverse of codes_to_indices: (...) indices -> (..., C) float32 codes."""
        levels = torch.tensor(self.levels, device=indices.device)
        digits = (indices.long()[..., None] // self.basis) % levels
        return (digits.float() - self.half_width) / self.half_width


@dataclass
class GaussianPosterior:
    mean: Tensor  # (B, N, C)
    logvar: Tensor  # (B, N, C), clipped to [-30, 20]

    def sample(self) -> Tensor:
        return self.mean + torch.exp(0.5 * self.logvar) * torch.randn_like(self.mean)

    def kl(self, keep_mask: Tensor, block_size: int) -> Tensor:
        """KL to N(0, I) summed over kept tokens and channels, averaged over blocks and batch."""
        per_token = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(-1)  # (B, N)
        per_token = per_token * keep_mask
        per_block = per_token.view(per_token.shape[0], -1, block_size).sum(-1)  # (B, n_blocks)
        return per_block.mean()


class GaussianBottleneck(nn.Module):
    """Splits features into mean and log-variance; samples in training, takes the mean otherwise."""

    def forward(self, z: Tensor) -> tuple[Tensor, GaussianPosterior]:
        mean, logvar = z.float().chunk(2, dim=-1)
        posterior = GaussianPosterior(mean, logvar.clamp(-30.0, 20.0))
        return (posterior.sample() if self.training else posterior.mean), posterior
