"""Reading and writing images and videos (PyAV, Pillow), and finding media files.

Frames are handled as uint8 tensors (T, H, W, 3) until they reach a model; see
``elastictok.media.transforms`` for fitting them and converting to the model's [-1, 1] range.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ElasticTokError
from ..utils.fileio import atomic_path, check_input_file
from .limits import MAX_PIXELS, MAX_SIDE, check_fps, is_valid_fps

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
ANIMATION_SUFFIXES = {".gif", ".png"}  # animated images that FFmpeg decodes as videos
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg"}


# ---- reading ------------------------------------------------------------------------------------
def is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def is_animation(path: Path) -> bool:
    """An animated GIF or PNG (more than one frame), which is read as a video; other animated images
    (WebP) are refused in one line rather than read as their first frame."""
    # a TIFF's pages are not a clip; a pipe could block the read (read_image refuses it)
    if path.suffix.lower() not in IMAGE_SUFFIXES - {".tif", ".tiff"} or not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            animated = getattr(image, "is_animated", False)
    except Exception:  # not readable: read_image says why
        return False
    if animated and path.suffix.lower() not in ANIMATION_SUFFIXES:
        raise ElasticTokError(f"{path}: an animated {path.suffix[1:].upper()} is not read; convert it to a video "
                              f"(.mp4) or a GIF first")
    return animated


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Any PIL-readable image (grey, RGBA, 16-bit, palette) as uint8 RGB (H, W, 3)."""
    path = check_input_file(path, "an image")
    try:
        with Image.open(path) as image:
            check_image_size(path, *image.size)
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
    except Image.DecompressionBombError as exc:
        raise ElasticTokError(f"{path}: too many pixels to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ElasticTokError(f"{path}: not a readable image ({exc})") from None
    if min(rgb.shape[:2]) == 0:
        raise ElasticTokError(f"{path}: image has no pixels")
    return torch.from_numpy(rgb.copy())


def check_image_size(path: Path, width: int, height: int) -> None:
    """Refuse an image too large to decode safely, before decoding it (a decompression bomb)."""
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        raise ElasticTokError(f"{path}: {width}x{height} = {width * height} pixels is too large (at most {MAX_PIXELS} "
                              f"pixels and {MAX_SIDE} on a side); downscale it first")


@dataclass
class VideoInfo:
    fps: float
    width: int
    height: int
    frames: int | None  # from the container; None when it does not say
    seconds: float | None = None  # the stream's duration, from the container; None when it does not say


def quarter_turns(frame: av.VideoFrame | None) -> int:
    """Counterclockwise quarter turns that show ``frame`` upright, from its display matrix (a phone stores a
    portrait clip as landscape frames with a 90 degree rotation for the player); 0 for no frame."""
    return round(getattr(frame, "rotation", 0) / 90) % 4 if frame is not None else 0


def upright(frame: av.VideoFrame) -> torch.Tensor:
    """A decoded frame as uint8 (H, W, 3), turned as its display matrix says."""
    image = torch.from_numpy(frame.to_ndarray(format="rgb24"))
    turns = quarter_turns(frame)
    return torch.rot90(image, turns).contiguous() if turns else image


class VideoReader:
    """Decodes a video file frame by frame with PyAV, optionally resampled to ``fps``.

    Never holds more than one decoded frame; use as an iterator of uint8 (H, W, 3) tensors.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = None):
        self.path = Path(path)
        check_fps(fps)
        self.target_fps = fps
        self.skipped = 0  # corrupt packets skipped by the last pass over the frames
        check_input_file(self.path, "a video")
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ElasticTokError(f"{self.path}: has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or Fraction(24)
                duration = stream.duration * stream.time_base if stream.duration and stream.time_base else None
                self.info = VideoInfo(float(rate), stream.codec_context.width, stream.codec_context.height,
                                      stream.frames or None, float(duration) if duration else None)
                if self.info.width == 0 or self.info.height == 0:
                    raise ElasticTokError(f"{self.path}: video stream has no frame size")
                if max(self.info.width, self.info.height) > MAX_SIDE:
                    raise ElasticTokError(f"{self.path}: {self.info.width}x{self.info.height} frames are too large")
                if quarter_turns(next(self._frames(container, stream), None)) % 2:  # shown portrait
                    self.info.width, self.info.height = self.info.height, self.info.width
        except av.error.FFmpegError as exc:
            raise ElasticTokError(f"{self.path}: not a readable video ({exc.strerror or exc})") from None
        if not is_valid_fps(self.info.fps):
            self.info.fps = 24.0  # a container with a nonsensical rate: assume the common one

    @property
    def fps(self) -> float:
        return self.target_fps or self.info.fps

    def _frames(self, container, stream) -> Iterator:
        """Decoded frames; a corrupt packet is skipped (FFmpeg resynchronises at the next decodable one)."""
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                self.skipped += 1
                continue
            yield from frames

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Frames as uint8 (H, W, 3); with a target fps, each output tick takes the latest source frame.

        Corrupt stretches are skipped with one warning naming how many packets were lost.
        """
        produced = decoded = 0
        self.skipped, last_time = 0, None
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in self._frames(container, stream):
                    decoded += 1
                    last_time = frame.time if frame.time is not None else last_time
                    image = upright(frame)
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
        if self.skipped:
            log.warning("%s: skipped %d corrupt packets; the %d frames around them were encoded", self.path,
                        self.skipped, decoded)
        seconds = self.info.seconds
        if seconds and last_time is not None and seconds - last_time > max(2 / self.info.fps, 0.05 * seconds):
            # a demuxer that gives up after damage (AVI's) says nothing; timestamps, not frame counts, tell
            # (a variable-rate file lists frames its encoder dropped)
            log.warning("%s: decoding ended at %.1f s of its %.1f s; the rest is damaged or missing", self.path,
                        last_time, seconds)

    def read_all(self) -> torch.Tensor:
        """Every frame as (T, H, W, 3) uint8: only for clips known to be short."""
        return torch.stack(list(self))


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
            picture = av.VideoFrame.from_ndarray(frame.contiguous().numpy(), format="rgb24")
            self._container.mux(self._stream.encode(picture))

    def __exit__(self, exc_type, exc, tb) -> None:
        """Flush and close; the file appears only if both succeed (a Ctrl-C or a full disk while the encoder
        flushes leaves nothing, rather than a truncated video under the target's name)."""
        try:
            if exc_type is None:
                if self._stream is None:
                    raise ElasticTokError(f"{self.path}: no frames to write")
                self._container.mux(self._stream.encode())
            self._container.close()
        except BaseException as error:
            with contextlib.suppress(Exception):
                self._container.close()  # already closed, or as closed as it can be
            self._atomic.__exit__(type(error), error, error.__traceback__)  # removes ours (a write error: names it)
            raise
        self._atomic.__exit__(exc_type, exc, tb)


def write_video(path: str | os.PathLike, frames: torch.Tensor, fps: float, crf: int = 18) -> None:
    """Write uint8 (T, H, W, 3) as an H.264 video, atomically."""
    with VideoWriter(path, fps, crf) as writer:
        writer.write(frames)


# ---- finding media --------------------------------------------------------------------------------
def list_media(paths: list[str | os.PathLike]) -> list[Path]:
    """Media files under the given files and folders (recursively), sorted for reproducibility."""
    found: list[Path] = []
    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            found.extend(p for p in sorted(entry.rglob("*")) if p.is_file() and is_media(p))
        elif entry.is_file():
            found.append(entry)
        elif entry.exists():
            raise ElasticTokError(f"{entry}: is a pipe or device, not an image, video or folder")
        else:
            raise ElasticTokError(f"{entry}: no such file or folder")
    return found
