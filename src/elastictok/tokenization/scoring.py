"""A tokenization decoded and scored against its source, written once.

``encode``'s summary, ``elastictok eval``, the HTML report and the side-by-side video all measure
blocks here, so the numbers they report for the same tokens are the same numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..media.transforms import from_model, to_model
from ..metrics.quality import METRICS
from .options import TokenizeOptions
from .tokenfile import TokenizedVideo
from .tokenizer import iter_decode, read_source


@dataclass
class Measured:
    """Every named metric per block, and (when asked for) the frames that were compared."""

    metrics: dict[str, list[float]]
    original: Tensor | None = None  # uint8 (T, H, W, 3): the frames the model saw (fitted, padding removed)
    recon: Tensor | None = None  # uint8 (T, H, W, 3)


def scored_blocks(model, encoded: TokenizedVideo, source, options: TokenizeOptions | None = None,
                  metrics: Sequence[str] = tuple(METRICS)) -> Iterator[tuple[Tensor, Tensor, dict[str, float]]]:
    """Per block: the reconstruction (fpb, 3, H, W) in [-1, 1], its uint8 source block (fpb, H, W, 3) and
    its score on each of ``metrics``. ``source``: the media path (read afresh) or its blocks as
    ``read_source`` gives them."""
    options = options or TokenizeOptions()
    blocks = read_source(model, source, options)[1] if isinstance(source, (str, os.PathLike)) else source
    for recon, block in zip(iter_decode(model, encoded, options.window), blocks):
        yield recon, block, block_scores(recon, block, metrics)


def block_scores(recon: Tensor, block: Tensor, metrics: Sequence[str] = tuple(METRICS)) -> dict[str, float]:
    """One reconstructed block (fpb, 3, H, W) in [-1, 1] scored against its uint8 source (fpb, H, W, 3)."""
    original = to_model(block)[None].to(recon.device)
    return {name: float(METRICS[name][0](recon[None], original)) for name in metrics}


@torch.no_grad()
def decode_and_score(model, encoded: TokenizedVideo, source, options: TokenizeOptions | None = None,
                     metrics: Sequence[str] = tuple(METRICS), frames: bool = False) -> Measured:
    """Decode ``encoded`` and score each block against ``source``; with ``frames``, keep both as uint8."""
    values: dict[str, list[float]] = {name: [] for name in metrics}
    originals, recons = [], []
    image = encoded.info.is_image
    for recon, block, scores in scored_blocks(model, encoded, source, options, metrics):
        for name, value in scores.items():
            values[name].append(value)
        if frames:
            originals.append(block)
            recons.append(from_model(recon.mean(0, keepdim=True) if image else recon))
    if not frames:
        return Measured(values)
    shown = 1 if image else encoded.info.frames
    return Measured(values, torch.cat(originals)[:shown], torch.cat(recons)[:shown])


def achieved_mse(model, encoded: TokenizedVideo, source, options: TokenizeOptions | None = None) -> float:
    """Mean per-block MSE of the reconstruction: the stored scores when they are MSE, else decoded again."""
    if encoded.metric == "mse":
        return encoded.scores.mean().item()
    errors = decode_and_score(model, encoded, source, options, metrics=("mse",)).metrics["mse"]
    return sum(errors) / len(errors)
