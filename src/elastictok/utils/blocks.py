"""Block arithmetic every layer shares: an image as one block, padding to whole blocks, trimming it off.

A block is ``frames_per_block`` consecutive frames; tensors here may hold frames as (T, ...) or
with a leading batch dimension (``dim=1``).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor


def image_as_block(image: Tensor, frames_per_block: int, dim: int = 0) -> Tensor:
    """An image as one block of repeated frames: ``image`` has size 1 at ``dim`` (its time axis)."""
    sizes = [-1] * image.dim()
    sizes[dim] = frames_per_block
    return image.expand(*sizes)


def pad_to_blocks(frames: Tensor, frames_per_block: int) -> Tensor:
    """(T, ...) frames padded to whole blocks by repeating the last frame."""
    pad = (-frames.shape[0]) % frames_per_block
    if not pad:
        return frames
    return torch.cat([frames, frames[-1:].expand(pad, *frames.shape[1:])])


def trim_padding(blocks: Iterable[Tensor], frames: int | None) -> Iterator[Tensor]:
    """Blocks (T_k, ...) with the padding past the first ``frames`` real frames dropped (None or 0: keep all)."""
    remaining = frames or None
    for block in blocks:
        if remaining is not None:
            block, remaining = block[:remaining], remaining - len(block[:remaining])
        if len(block):
            yield block
