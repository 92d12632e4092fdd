"""A tokenization decoded and scored against its source, written once.

``encode``'s summary, ``elastictok eval``, the HTML report and the side-by-side video all measure
blocks here, so the numbers they report for the same tokens are the same numbers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..media.blocks import MediaInfo
from ..media.transforms import from_model, to_model
from ..metrics.quality import METRICS
from .options import TokenizeOptions
from .targets import Target
from .tokenfile import TokenizedVideo
from .tokenizer import Tokenizer, iter_decode, read_source


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


ONE_COUNT_PER_PASS = ("binary", "regression")  # searches whose every trial decodes one count of one stream


@torch.no_grad()
def tokenize_and_score(model, info: MediaInfo, blocks: Sequence[Tensor], targets: Sequence[Target],
                       options: TokenizeOptions | None = None, metrics: Sequence[str] = tuple(METRICS)
                       ) -> list[tuple[TokenizedVideo, Measured]]:
    """The uint8 ``blocks`` of one input (as ``read_source`` gives them) tokenized for each of ``targets`` and
    scored on ``metrics``, as ``tokenize_blocks`` then ``decode_and_score`` would, in one pass over the blocks.

    The tokenizations advance together, a block at a time, so a family whose encoder output does not depend on
    the counts kept encodes each block once for all of them. A block decided in a trial of its own (a fixed
    count, or a search of one count per pass) is scored on that trial's reconstruction: the same computation on
    the same tokens as decoding them, so the same numbers, and the decoder does not run again. A search that
    decodes several counts per pass (``batched``, ``full``) may round differently, so those are decoded again.
    """
    options = options or TokenizeOptions()
    exact = [target.fixed_tokens is not None or options.search in ONE_COUNT_PER_PASS for target in targets]
    shared: dict = {}
    recons: list[list[Tensor]] = [[] for _ in targets]
    codings = [Tokenizer(model, target, options, on_block=lambda k, recon, coder, kept=kept: kept.append(recon[0]))
               .start([info], shared) for target, kept in zip(targets, recons)]
    started = time.perf_counter()
    measured: list[dict[str, list[float]]] = [{name: [] for name in metrics} for _ in targets]
    for block in blocks:
        pixels = to_model(block)[None]
        for coding, kept, values, scored in zip(codings, recons, measured, exact):
            coding.add(pixels)
            recon = kept.pop()
            for name, value in (block_scores(recon, block, metrics) if scored else {}).items():
                values[name].append(value)
    seconds = (time.perf_counter() - started) / len(codings)
    results = []
    for coding, values, scored in zip(codings, measured, exact):
        encoded = coding.results(seconds)[0]
        if not scored:
            values = decode_and_score(model, encoded, blocks, options, metrics).metrics
        results.append((encoded, Measured(values)))
    return results


def achieved_mse(model, encoded: TokenizedVideo, source, options: TokenizeOptions | None = None) -> float:
    """Mean per-block MSE of the reconstruction: the stored scores when they are MSE, else decoded again."""
    if encoded.metric == "mse":
        return encoded.scores.mean().item()
    errors = decode_and_score(model, encoded, source, options, metrics=("mse",)).metrics["mse"]
    return sum(errors) / len(errors)
