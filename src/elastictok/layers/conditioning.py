"""Timestep conditioning for diffusion / flow transformers: sinusoidal embedding and adaLN modulation.

After DiT (Peebles & Xie 2023): a flow time t becomes a vector c, and c sets a shift, scale (and
gate) per sub-layer through a zero-initialised linear layer (adaLN-zero).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features (..., dim) of flow times t (...) in [0, 1], scaled by 1000 as in DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = 1000.0 * t.float()[..., None] * freqs  # (..., dim/2)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class TimestepEmbedder(nn.Module):
    """t (...) -> conditioning vector (..., D): sinusoidal features through a two-layer MLP."""

    def __init__(self, width: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """RMSNorm without a learned scale (the modulation supplies it), computed in float32."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift
