"""Training the one-pass length head: error curves recorded on real media, then a small regression."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ElasticTokError
from ..metrics.quality import block_mse
from ..models.coder import BlockCoder
from ..tokenization.length_head import (DEFAULT_MARGIN, LengthHead, count_grid, first_crossing, head_inputs,
                                         safe_log, threshold_mse)
from ..tokenization.targets import Target
from ..tokenization.tokenizer import tokenize_watched


@dataclass
class Curves:
    """What a head learns from: per block, its inputs and its MSE at every count of the grid."""

    inputs: Tensor  # (N, F) head inputs (elastictok.tokenization.length_head.head_inputs)
    mse: Tensor  # (N, G) MSE at each grid count; the last column is every token's
    counts: Tensor  # (G,) the grid

    def searched(self, threshold: float) -> Tensor:
        """(N,) what a search would keep: the fewest tokens that meet ``threshold``, else Mmax (the recorded
        curves read linearly in log MSE between grid counts)."""
        return first_crossing(self.log_mse, self.counts, math.log(threshold))

    def mse_at(self, counts: Tensor) -> Tensor:
        """(N,) each block's MSE at its own count (N,), read from its curve like ``searched``."""
        right = torch.searchsorted(self.counts, counts).clamp(1, len(self.counts) - 1)
        lo, hi = self.counts[right - 1], self.counts[right]
        share = ((counts - lo).float() / (hi - lo).float()).clamp(0, 1)
        at = lambda i: self.log_mse.gather(1, i[:, None])[:, 0]  # noqa: E731
        return (at(right - 1) + share * (at(right) - at(right - 1))).exp()

    @property
    def log_mse(self) -> Tensor:
        return safe_log(self.mse)

    def compare(self, counts: Tensor, threshold: float) -> dict[str, float]:
        """Counts (N,) chosen without a search, against what a search keeps, at one threshold."""
        counts = counts.clamp(int(self.counts[0]), int(self.counts[-1]))
        searched = self.searched(threshold)
        reachable = self.mse[:, -1] <= threshold
        return {"off": ((counts - searched).abs() > 8).float().mean().item(),
                "fails": ((self.mse_at(counts) > threshold * (1 + 1e-4)) & reachable).float().mean().item(),
                "mean_tokens": counts.float().mean().item(), "search_mean_tokens": searched.float().mean().item()}

    def save(self, path) -> None:
        torch.save({"inputs": self.inputs, "mse": self.mse, "counts": self.counts}, path)

    @classmethod
    def load(cls, path) -> "Curves":
        return cls(**torch.load(path, weights_only=True))


@dataclass
class HeadReport:
    blocks: int
    train_loss: float
    off: float | None = None  # share of held-out blocks more than 8 tokens from what a search keeps
    fails: float | None = None  # share of held-out blocks whose predicted count misses a reachable threshold
    mean_tokens: float | None = None  # the head's mean count on held-out blocks
    search_mean_tokens: float | None = None  # the grid search's


def error_curves(coder: BlockCoder, block: Tensor, patches: Tensor, counts: Tensor) -> Tensor:
    """(B, G) each stream's MSE at each of ``counts`` (G,), one batched pass per stream."""
    curves = []
    for row in range(block.shape[0]):
        rows = torch.full((len(counts),), row, device=block.device)
        trial = coder.trial(patches, counts.to(block.device), rows)
        curves.append(block_mse(trial.recon, block[rows]))
    return torch.stack(curves).cpu()


def collect_curves(model, inputs: list, target: Target, **kwargs) -> Curves:
    """Error curves of every block of every input; the context of each block is what a binary search
    for ``target`` committed before it (what tokenizing for that target would see)."""
    c = model.config
    grid = count_grid(c.min_tokens, c.tokens_per_block)
    recorded: list[tuple[Tensor, Tensor]] = []

    def record(coder: BlockCoder, block: Tensor, patches: Tensor) -> None:
        curves = error_curves(coder, block, patches, grid)
        recorded.append((head_inputs(coder, block, patches, curves[:, -1]).cpu(), curves))

    tokenize_watched(model, list(inputs), target, record, search="binary", **kwargs)
    return Curves(torch.cat([x for x, _ in recorded]), torch.cat([y for _, y in recorded]), grid)


def fit_length_head(model, curves: Curves, steps: int = 2000, members: int = 5, seed: int = 0,
                    margin: float = DEFAULT_MARGIN) -> tuple[LengthHead, float]:
    """A head fitted to ``curves`` (full-batch AdamW, each member from its own seed); returns it and its loss."""
    if steps < 1:
        raise ElasticTokError(f"a length head trains for at least 1 step, got {steps}")
    head = LengthHead(model.config.width, curves.counts.tolist(), model.config.fingerprint(),
                      weights_hash=model.weights_digest(), members=members, margin=margin)
    excess = curves.log_mse - curves.log_mse[:, -1:]  # (N, G)
    losses = []
    for i, member in enumerate(head.members):
        torch.manual_seed(seed + i)
        for layer in member:
            if isinstance(layer, (nn.Linear, nn.LayerNorm)):
                layer.reset_parameters()
        optimizer = torch.optim.AdamW(member.parameters(), lr=3e-3, weight_decay=1e-3)
        for _ in range(steps):
            loss = (member(curves.inputs) - excess).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    return head.eval(), sum(losses) / len(losses)


def score_length_head(head: LengthHead, curves: Curves, target: Target) -> dict[str, float]:
    """How the head's counts compare with a search's on held-out curves, for one threshold."""
    threshold = threshold_mse(target)
    return curves.compare(head.choose(curves.inputs, curves.mse[:, -1], threshold), threshold)


def train_length_head(model, inputs: list, target: Target, steps: int = 2000, eval_inputs: list | None = None,
                      **kwargs) -> tuple[LengthHead, HeadReport]:
    """Record curves on ``inputs``, fit a head, and score it on ``eval_inputs`` (if any) at ``target``."""
    threshold_mse(target)  # refuse targets the head cannot serve before any work
    curves = collect_curves(model, inputs, target, **kwargs)
    head, loss = fit_length_head(model, curves, steps)
    scores = {}
    if eval_inputs:
        scores = score_length_head(head, collect_curves(model, eval_inputs, target, **kwargs), target)
    return head, HeadReport(blocks=len(curves.mse), train_loss=loss, **scores)
