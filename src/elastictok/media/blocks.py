"""Whole files as model-ready blocks: an image or video streamed as uint8 blocks (frames_per_block, H, W, 3)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ElasticTokError
from ..utils.blocks import image_as_block
from .io import IMAGE_SUFFIXES, VideoReader, is_video, read_image
from .limits import check_fps
from .transforms import fit_to_resolution


@dataclass
class MediaInfo:
    """What is needed to turn a model's output back into the user's media."""

    source: str
    fps: float | None  # None for images
    size: tuple[int, int]  # original (H, W)
    frames: int = 0  # real frames read (images: 1); the last block may hold padding past this
    is_image: bool = False
    expected_frames: int | None = field(default=None, compare=False)  # the container's count, for progress bars


def iter_media_blocks(path: str | os.PathLike, resolution: tuple[int, int], frames_per_block: int,
                      fps: float | None = None, fit: str = "crop", min_size: int = 1
                      ) -> tuple[MediaInfo, Iterator[torch.Tensor]]:
    """Open an image or video and stream it as uint8 blocks (frames_per_block, H, W, 3).

    A video is never held whole: frames are read, fitted to ``resolution`` and grouped one block at a
    time. A final partial block repeats its last frame; ``info.frames`` counts the real frames once
    the iterator is exhausted. An image is one block of the image repeated. Media smaller than
    ``min_size`` pixels on a side (a model's patch) are refused.
    """
    path = Path(path)
    if fit not in ("crop", "pad"):
        raise ElasticTokError(f"fit must be 'crop' or 'pad', got {fit!r}")
    check_fps(fps)
    if path.is_dir():
        raise ElasticTokError(f"{path}: is a directory, not an image or video file")

    def check_size(h: int, w: int) -> None:
        if min(h, w) < min_size:
            raise ElasticTokError(f"{path}: {h}x{w} pixels is smaller than one {min_size}x{min_size} patch")

    if not is_video(path):
        if path.suffix.lower() not in IMAGE_SUFFIXES and path.exists():
            raise ElasticTokError(f"{path}: not an image or video file (unknown suffix {path.suffix!r})")
        image = read_image(path)
        check_size(*image.shape[:2])
        info = MediaInfo(str(path), None, tuple(image.shape[:2]), 1, True)
        block = image_as_block(fit_to_resolution(image[None], resolution, fit), frames_per_block)
        return info, iter([block.contiguous()])
    reader = VideoReader(path, fps=fps)
    check_size(reader.info.height, reader.info.width)
    expected = reader.info.frames
    if expected and fps:
        expected = round(expected * fps / reader.info.fps)
    info = MediaInfo(str(path), reader.fps, (reader.info.height, reader.info.width), expected_frames=expected)

    def blocks() -> Iterator[torch.Tensor]:
        pending: list[torch.Tensor] = []
        for frame in reader:
            pending.append(fit_to_resolution(frame[None], resolution, fit)[0])
            info.frames += 1
            if len(pending) == frames_per_block:
                yield torch.stack(pending)
                pending = []
        if pending:
            pending += [pending[-1]] * (frames_per_block - len(pending))
            yield torch.stack(pending)

    return info, blocks()
