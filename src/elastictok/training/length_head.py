"""Training the one-pass length head: labels from a search over real media, then a small regression."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ElasticTokError
from ..tokenization.length_head import LengthHead
from ..tokenization.targets import Threshold
from ..tokenization.tokenizer import tokenize


@dataclass
class HeadReport:
    blocks: int
    train_loss: float
    disagreement: float | None = None  # share of held-out blocks where the prediction != the search
    mean_abs_error: float | None = None  # tokens


def collect(model, inputs: list, target: Threshold, search: str, **kwargs) -> tuple[Tensor, Tensor]:
    """Features and searched counts of every block of every input."""
    sink: list[Tensor] = []
    results = tokenize(model, list(inputs), target, search=search, feature_sink=sink, **kwargs)
    counts = torch.cat([r.counts for r in results])
    return torch.cat(sink), counts


def train_length_head(model, inputs: list, target: Threshold, search: str = "binary", steps: int = 2000,
                      eval_inputs: list | None = None, **kwargs) -> tuple[LengthHead, HeadReport]:
    if steps < 1:
        raise ElasticTokError(f"a length head trains for at least 1 step, got {steps}")
    features, counts = collect(model, inputs, target, search, **kwargs)
    m = model.config.tokens_per_block
    head = LengthHead(model.config.width, str(target), model.config.fingerprint(), weights_hash=model.weights_digest())
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    labels = counts.float() / m
    for _ in range(steps):
        loss = (head(features) - labels).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = HeadReport(blocks=len(labels), train_loss=loss.item())
    head.eval()
    if eval_inputs:
        feats, truth = collect(model, eval_inputs, target, "full", **kwargs)
        with torch.no_grad():
            predicted = (head(feats) * m).round().long().clamp(model.config.min_tokens, m)
        report.disagreement = (predicted != truth).float().mean().item()
        report.mean_abs_error = (predicted - truth).abs().float().mean().item()
    return head, report
