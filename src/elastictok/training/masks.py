"""How many tokens each block keeps during training (Algorithm 1 of the paper)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ElasticTokError


KEEP_DISTRIBUTIONS = ("uniform", "long")


class KeepSampler:
    """Draws ``keep`` (B, n_blocks) for a training batch.

    Modes: ``elastic`` (uniform on [Mmin, Mmax] per block, the ElasticTok objective),
    ``elastic+full`` (as elastic, but the first of several ``lengths`` is always Mmax),
    ``fixed:<fraction>`` (a constant count: the fixed-length baseline), ``full`` (every token).
    With ``lengths`` L > 1 every sample is decoded at L counts: the sampler returns (L, B, n_blocks).
    ``distribution`` shapes the elastic counts: ``uniform`` (the paper) or ``long`` (density rising
    linearly towards Mmax, so long prefixes, which the full-length quality rests on, train more often).
    """

    def __init__(self, mode: str, min_tokens: int, max_tokens: int, lengths: int = 1,
                 distribution: str = "uniform"):
        self.mode, self.min_tokens, self.max_tokens, self.lengths = mode, min_tokens, max_tokens, lengths
        if distribution not in KEEP_DISTRIBUTIONS:
            raise ElasticTokError(f"unknown keep distribution {distribution!r}; use {' or '.join(KEEP_DISTRIBUTIONS)}")
        self.distribution = distribution
        if lengths < 1:
            raise ElasticTokError(f"mask_lengths must be at least 1, got {lengths}")
        if mode == "elastic+full" and lengths < 2:
            raise ElasticTokError("mask mode elastic+full needs mask_lengths >= 2 (one full, the rest elastic)")
        if mode.startswith("fixed:"):
            try:
                fraction = float(mode.split(":", 1)[1])
            except ValueError:
                raise ElasticTokError(f"mask mode {mode!r}: expected fixed:<fraction>, e.g. fixed:0.25") from None
            if not 0 < fraction <= 1:
                raise ElasticTokError(f"mask mode {mode!r}: the fraction must lie in (0, 1]")
            self.fixed = max(1, round(fraction * max_tokens))
        elif mode == "full":
            self.fixed = max_tokens
        elif mode in ("elastic", "elastic+full"):
            self.fixed = None
        else:
            raise ElasticTokError(f"unknown mask mode {mode!r}; use elastic, elastic+full, full or fixed:<fraction>")

    def __call__(self, batch: int, n_blocks: int, generator: torch.Generator) -> Tensor:
        shape = (self.lengths, batch, n_blocks) if self.lengths > 1 else (batch, n_blocks)
        if self.fixed is not None:
            return torch.full(shape, self.fixed, dtype=torch.long)
        if self.distribution == "uniform":
            keep = torch.randint(self.min_tokens, self.max_tokens + 1, shape, generator=generator)
        else:  # "long": the square root of a uniform variable has density 2x on [0, 1]
            spread = self.max_tokens - self.min_tokens + 1
            fraction = torch.rand(shape, generator=generator).sqrt()
            keep = self.min_tokens + (fraction * spread).long().clamp(max=spread - 1)
        if self.mode == "elastic+full":
            keep[0] = self.max_tokens
        return keep
