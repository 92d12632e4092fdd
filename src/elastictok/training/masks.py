"""How many tokens each block keeps during training (Algorithm 1 of the paper)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ElasticTokError


class KeepSampler:
    """Draws ``keep`` (B, n_blocks) for a training batch.

    Modes: ``elastic`` (uniform on [Mmin, Mmax] per block, the ElasticTok objective),
    ``elastic+full`` (as elastic, but the first of several ``lengths`` is always Mmax),
    ``fixed:<fraction>`` (a constant count: the fixed-length baseline), ``full`` (every token).
    With ``lengths`` L > 1 every sample is decoded at L counts: the sampler returns (L, B, n_blocks).
    """

    def __init__(self, mode: str, min_tokens: int, max_tokens: int, lengths: int = 1):
        self.mode, self.min_tokens, self.max_tokens, self.lengths = mode, min_tokens, max_tokens, lengths
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
        keep = torch.randint(self.min_tokens, self.max_tokens + 1, shape, generator=generator)
        if self.mode == "elastic+full":
            keep[0] = self.max_tokens
        return keep
