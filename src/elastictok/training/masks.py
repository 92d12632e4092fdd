"""How many tokens each block keeps during training (Algorithm 1 of the paper)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ElasticTokError


class KeepSampler:
    """Draws ``keep`` (B, n_blocks) for a training batch.

    Modes: ``elastic`` (uniform on [Mmin, Mmax] per block, the ElasticTok objective),
    ``fixed:<fraction>`` (a constant count: the fixed-length baseline), ``full`` (every token).
    """

    def __init__(self, mode: str, min_tokens: int, max_tokens: int):
        self.mode, self.min_tokens, self.max_tokens = mode, min_tokens, max_tokens
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
        elif mode == "elastic":
            self.fixed = None
        else:
            raise ElasticTokError(f"unknown mask mode {mode!r}; use elastic, full or fixed:<fraction>")

    def __call__(self, batch: int, n_blocks: int, generator: torch.Generator) -> Tensor:
        if self.fixed is not None:
            return torch.full((batch, n_blocks), self.fixed, dtype=torch.long)
        return torch.randint(self.min_tokens, self.max_tokens + 1, (batch, n_blocks), generator=generator)
