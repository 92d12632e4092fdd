"""Reading and writing real media, and the training datasets built on it.

Frames are handled as uint8 tensors (T, H, W, 3) until they reach a model; ``to_model`` turns
them into (T, 3, H, W) floats in [-1, 1] and ``from_model`` back.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ElasticTokError
from ..utils.fileio import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg"}


# ---- reading ------------------------------------------------------------------------------------
def is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Any PIL-readable image (grey, RGBA, 16-bit, palette) as uint8 RGB (H, W, 3)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                scale = 65535.0 if array.max() > 255 else 255.0
                array = np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
                image = Image.fromarray(array, mode="L")
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Composite transparency on white rather than keeping arbitrary hidden colours.
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            rgb = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ElasticTokError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ElasticTokError(f"{path}: not a readable image ({exc})") from None
    if min(rgb.shape[:2]) == 0:
        raise ElasticTokError(f"{path}: image has no pixels")
    return torch.from_numpy(rgb.copy())


@dataclass
class VideoInfo:
    fps: float
    width: int
    height: int
    frames: int | None  # from the container; None when it does not say


class VideoReader:
    """Decodes a video file frame by frame with PyAV, optionally resampled to ``fps``.

    Never holds more than one decoded frame; use as an iterator of uint8 (H, W, 3) tensors.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = None):
        self.path = Path(path)
        self.target_fps = fps
        if not self.path.exists():
            raise ElasticTokError(f"{self.path}: no such file")
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ElasticTokError(f"{self.path}: has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or Fraction(24)
                self.info = VideoInfo(float(rate), stream.codec_context.width, stream.codec_context.height,
                                      stream.frames or None)
        except av.error.FFmpegError as exc:
            raise ElasticTokError(f"{self.path}: not a readable video ({exc.strerror or exc})") from None
        if self.info.width == 0 or self.info.height == 0:
            raise ElasticTokError(f"{self.path}: video stream has no frame size")

    @property
    def fps(self) -> float:
        return self.target_fps or self.info.fps

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Frames as uint8 (H, W, 3); with a target fps, each output tick takes the latest source frame."""
        produced = decoded = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    decoded += 1
                    image = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                    # Source frame i covers [i, i+1) / source fps; emit it for every output tick inside.
                    until = decoded / self.info.fps
                    while produced == 0 or not self.target_fps or produced / self.target_fps < until - 1e-9:
                        produced += 1
                        yield image
                        if not self.target_fps:
                            break
        except av.error.FFmpegError as exc:
            if decoded == 0:
                raise ElasticTokError(f"{self.path}: not a readable video ({exc.strerror or exc})") from None
            log.warning("%s: decoding stopped after %d frames (%s)", self.path, decoded, exc)
        if decoded == 0:
            raise ElasticTokError(f"{self.path}: video has no decodable frames")

    def read_all(self) -> torch.Tensor:
        """Every frame as (T, H, W, 3) uint8: only for clips known to be short."""
        return torch.stack(list(self))


# ---- geometry and value range -------------------------------------------------------------------
def resize_short_side(frames: torch.Tensor, short: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> the same with min(H, W) == short, antialiased."""
    t, h, w, _ = frames.shape
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    if size == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=scale < 1, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def fit_to_resolution(frames: torch.Tensor, resolution: tuple[int, int], mode: str = "crop") -> torch.Tensor:
    """Resize (T, H, W, 3) uint8 so it covers (crop) or fits inside (pad) ``resolution``, then centre it."""
    th, tw = resolution
    t, h, w, _ = frames.shape
    scale = max(th / h, tw / w) if mode == "crop" else min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "crop":
        nh, nw = max(nh, th), max(nw, tw)
    if (nh, nw) != (h, w):
        x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="bilinear",
                          antialias=scale < 1, align_corners=False)
        frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if mode == "crop":
        top, left = (nh - th) // 2, (nw - tw) // 2
        return frames[:, top:top + th, left:left + tw]
    out = torch.zeros((t, th, tw, 3), dtype=torch.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[:, top:top + nh, left:left + nw] = frames
    return out


def to_model(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


def from_model(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu()


# ---- writing --------------------------------------------------------------------------------------
def write_image(path: str | os.PathLike, frame: torch.Tensor) -> None:
    """Write uint8 (H, W, 3) as png/jpg/webp, atomically."""
    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise ElasticTokError(f"{path}: image output must end in .png, .jpg or .webp")
    with atomic_path(path) as tmp:
        Image.fromarray(frame.numpy()).save(tmp, format=fmt)


class VideoWriter:
    """Appends uint8 frames (H, W, 3) to an H.264 file that appears, whole, only on ``close``.

    Use as a context manager; on an exception the partial file is removed. Odd sizes are padded
    by one pixel (yuv420p needs even sizes).
    """

    def __init__(self, path: str | os.PathLike, fps: float, crf: int = 18):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".mkv", ".mov"):
            raise ElasticTokError(f"{self.path}: video output must end in .mp4, .mkv or .mov")
        self.fps, self.crf = Fraction(fps).limit_denominator(1001), crf
        self._atomic = atomic_path(self.path)
        self._container = self._stream = None

    def __enter__(self) -> "VideoWriter":
        tmp = self._atomic.__enter__()
        container_format = {".mkv": "matroska", ".mov": "mov"}.get(self.path.suffix.lower(), "mp4")
        self._container = av.open(str(tmp), mode="w", format=container_format)
        return self

    def write(self, frames: torch.Tensor) -> None:
        """Append (T, H, W, 3) or (H, W, 3) uint8 frames."""
        frames = frames[None] if frames.dim() == 3 else frames
        h, w = frames.shape[1:3]
        if h % 2 or w % 2:
            frames = F.pad(frames.permute(0, 3, 1, 2), (0, w % 2, 0, h % 2), mode="replicate").permute(0, 2, 3, 1)
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = frames.shape[2], frames.shape[1]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf), "preset": "medium"}
        for frame in frames:
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(frame.contiguous().numpy(), format="rgb24")))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self._stream is None:
                    raise ElasticTokError(f"{self.path}: no frames to write")
                self._container.mux(self._stream.encode())
        finally:
            self._container.close()
            self._atomic.__exit__(exc_type or (ElasticTokError if self._stream is None else None), exc, tb)


def write_video(path: str | os.PathLike, frames: torch.Tensor, fps: float, crf: int = 18) -> None:
    """Write uint8 (T, H, W, 3) as an H.264 video, atomically."""
    with VideoWriter(path, fps, crf) as writer:
        writer.write(frames)


# ---- whole files as model-ready blocks -------------------------------------------------------------
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

    def check_size(h: int, w: int) -> None:
        if min(h, w) < min_size:
            raise ElasticTokError(f"{path}: {h}x{w} pixels is smaller than one {min_size}x{min_size} patch")

    if not is_video(path):
        if path.suffix.lower() not in IMAGE_SUFFIXES and path.exists():
            raise ElasticTokError(f"{path}: not an image or video file (unknown suffix {path.suffix!r})")
        image = read_image(path)
        check_size(*image.shape[:2])
        info = MediaInfo(str(path), None, tuple(image.shape[:2]), 1, True)
        block = fit_to_resolution(image[None], resolution, fit).expand(frames_per_block, -1, -1, -1)
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


# ---- training data --------------------------------------------------------------------------------
def list_media(paths: list[str | os.PathLike]) -> list[Path]:
    """Media files under the given files and folders (recursively), sorted for reproducibility."""
    found: list[Path] = []
    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            found.extend(p for p in sorted(entry.rglob("*")) if p.is_file() and is_media(p))
        elif entry.is_file():
            found.append(entry)
        else:
            raise ElasticTokError(f"{entry}: no such file or folder")
    return found


def stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


@dataclass
class MediaCollection:
    """A folder of images and videos decoded once into memory at a reduced size.

    Items are uint8 (T, H, W, 3) with short side ``short_side`` (images have T = 1). Files that
    cannot be read are skipped with one warning line each and counted in ``skipped``.
    """

    items: list[torch.Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, paths: list[str | os.PathLike], short_side: int, max_frames: int | None = None,
             fps: float | None = None) -> "MediaCollection":
        collection = cls()
        for path in list_media(paths):
            try:
                if is_video(path):
                    frames = []
                    for frame in VideoReader(path, fps=fps):
                        frames.append(resize_short_side(frame[None], short_side)[0])
                        if max_frames and len(frames) >= max_frames:
                            break
                    item = torch.stack(frames)
                else:
                    item = resize_short_side(read_image(path)[None], short_side)
            except ElasticTokError as exc:
                log.warning("skipping %s", exc)
                collection.skipped.append(str(path))
                continue
            collection.items.append(item)
            collection.names.append(str(path))
        return collection

    @property
    def videos(self) -> list[int]:
        return [i for i, item in enumerate(self.items) if item.shape[0] > 1]

    @property
    def images(self) -> list[int]:
        return [i for i, item in enumerate(self.items) if item.shape[0] == 1]


def random_crop(clip: torch.Tensor, resolution: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """A random crop (between the resolution's aspect-fitted size and the whole frame) and flip, resized."""
    h, w = clip.shape[1:3]
    th, tw = resolution
    scale = rng.uniform(min(1.0, max(th / h, tw / w)), 1.0)
    ch, cw = min(h, max(1, round(h * scale))), min(w, max(1, round(w * scale)))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    clip = clip[:, top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        clip = clip.flip(2)
    return fit_to_resolution(clip, resolution)


class TrainBatches(torch.utils.data.Dataset):
    """Batch k of training, generated from k alone, so a resumed run sees exactly the same data.

    A batch is either ``batch_size`` video clips of ``n_blocks`` blocks, or ``batch_size * n_blocks``
    single-block images (the same number of tokens), chosen with probability ``image_fraction``.
    Crops (``random_crop``) take a random size between the resolution and the whole frame, and random flips.
    """

    def __init__(self, media: MediaCollection, resolution: tuple[int, int], frames_per_block: int,
                 n_blocks: int, batch_size: int, image_fraction: float, seed: int, length: int):
        if not media.items:
            raise ElasticTokError("no readable training media")
        self.media, self.resolution, self.fpb = media, resolution, frames_per_block
        self.n_blocks, self.batch_size, self.seed, self.length = n_blocks, batch_size, seed, length
        clip_frames = n_blocks * frames_per_block
        self.videos = [i for i in media.videos if media.items[i].shape[0] >= clip_frames]
        self.images = media.images
        self.image_fraction = image_fraction if self.videos else 1.0
        if not self.images:
            self.image_fraction = 0.0
        if not self.videos and not self.images:
            raise ElasticTokError(f"no training video has {clip_frames} frames and there are no images")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> torch.Tensor:
        rng = np.random.default_rng(stable_seed(self.seed, k))
        if rng.random() < self.image_fraction:
            picks = rng.choice(self.images, size=self.batch_size * self.n_blocks)
            clips = [random_crop(self.media.items[i][:1], self.resolution, rng).expand(self.fpb, -1, -1, -1)
                     for i in picks]
        else:
            length = self.n_blocks * self.fpb
            clips = []
            for i in rng.choice(self.videos, size=self.batch_size):
                start = rng.integers(0, self.media.items[i].shape[0] - length + 1)
                clips.append(random_crop(self.media.items[i][start:start + length], self.resolution, rng))
        return to_model(torch.stack(clips))  # (B, T, 3, H, W)


def eval_clips(media: MediaCollection, resolution: tuple[int, int], frames_per_block: int,
               clips_per_video: int = 4) -> list[torch.Tensor]:
    """Deterministic held-out samples: centre crops of every image and of evenly spaced one-block clips."""
    samples = []
    for item in media.items:
        if item.shape[0] == 1:
            samples.append(to_model(fit_to_resolution(item, resolution).expand(frames_per_block, -1, -1, -1)))
            continue
        last = item.shape[0] - frames_per_block
        for start in np.linspace(0, max(last, 0), clips_per_video).round().astype(int):
            if start + frames_per_block <= item.shape[0]:
                samples.append(to_model(fit_to_resolution(item[start:start + frames_per_block], resolution)))
    return samples
