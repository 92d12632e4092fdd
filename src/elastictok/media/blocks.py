"""Whole files as model-ready blocks: an image or video streamed as uint8 blocks (frames_per_block, H, W, 3)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ElasticTokError
from ..utils.blocks import image_as_block, pad_to_blocks
from .io import IMAGE_SUFFIXES, VideoReader, is_animation, is_video, read_image
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
    fit: str | None = None  # how frames were fitted to the model's size: "crop" or "pad" (None: not resized)
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

    if not is_video(path) and not is_animation(path):
        if path.suffix.lower() not in IMAGE_SUFFIXES and path.exists():
            raise ElasticTokError(f"{path}: not an image or video file (unknown suffix {path.suffix!r})")
        image = read_image(path)
        check_size(*image.shape[:2])
        info, blocks = pixel_blocks(image[None], resolution, frames_per_block, fit, str(path), is_image=True)
        return info, iter(blocks)
    reader = VideoReader(path, fps=fps)
    check_size(reader.info.height, reader.info.width)
    expected = reader.info.frames
    if expected and fps:
        expected = round(expected * fps / reader.info.fps)
    size = (reader.info.height, reader.info.width)
    info = MediaInfo(str(path), reader.fps, size, fit=_fit_used(size, resolution, fit), expected_frames=expected)

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


def pixel_blocks(frames: torch.Tensor, resolution: tuple[int, int], frames_per_block: int, fit: str = "crop",
                 source: str = "<pixels>", is_image: bool = False) -> tuple[MediaInfo, list[torch.Tensor]]:
    """Frames in memory, uint8 (T, H, W, 3), as ``iter_media_blocks`` gives a file: fitted to ``resolution``
    and grouped into blocks (an image: one block of the image repeated; a last partial block repeats its
    last frame)."""
    size = tuple(frames.shape[1:3])
    info = MediaInfo(source, None, size, 1 if is_image else len(frames), is_image, fit=_fit_used(size, resolution, fit))
    fitted = fit_to_resolution(frames, resolution, fit)
    if is_image:
        return info, [image_as_block(fitted, frames_per_block).contiguous()]
    return info, list(pad_to_blocks(fitted, frames_per_block).split(frames_per_block))


def _fit_used(size: tuple[int, int], resolution: tuple[int, int], fit: str) -> str | None:
    return None if tuple(size) == tuple(resolution) else fit


def describe_fit(info: MediaInfo, resolution: tuple[int, int]) -> tuple[str, bool] | None:
    """One line saying how ``info``'s source was fitted to ``resolution``, and whether its shape changed
    (cropped or padded, not only resized); None when it was not resized."""
    if info.fit is None:
        return None
    (h, w), (th, tw) = info.size, resolution
    reshaped = h * tw != w * th
    how = "resized and centre-cropped" if info.fit == "crop" else "resized and padded"
    line = f"{Path(info.source).name}: {w}x{h} {how if reshaped else 'resized'} to the model's {tw}x{th}"
    if reshaped and info.fit == "crop":
        line += " (its edges are left out; fit='pad' or --fit pad keeps the whole frame)"
    return line, reshaped
