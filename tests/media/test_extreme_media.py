"""Extreme media: every file is tokenized or refused in one line, and none is read wrongly in silence
(an animation as one still, a phone's portrait clip on its side)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hostile import one_line
from PIL import Image

from elastictok import ElasticTokError
from elastictok.media.io import VideoReader, write_video


def gradient(h: int, w: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 7 + shift) % 256, (y * 5 + shift) % 256, (x + y + 3 * shift) % 256], -1).astype(np.uint8)


def save_animation(path: Path, frames: int, **options) -> None:
    images = [Image.fromarray(gradient(40, 48, 25 * i)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0, **options)


def rotated_video(path: Path, degrees: int, frames: np.ndarray) -> None:
    """An H.264 file whose display matrix turns its frames by ``degrees`` counterclockwise, as phones write."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.set_display_rotation(degrees)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def make(kind: str, folder: Path) -> Path:
    """One extreme file of each kind."""
    path = folder / kind
    if kind in ("tiny.png", "8x8.png", "4096x8.png", "8x4096.png"):
        h, w = {"tiny.png": (1, 1), "8x8.png": (8, 8), "4096x8.png": (8, 4096), "8x4096.png": (4096, 8)}[kind]
        Image.fromarray(gradient(h, w)).save(path)
    elif kind == "16bit.png":
        Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(path)
    elif kind == "palette-transparent.gif":
        Image.fromarray(gradient(40, 40)).convert("P").save(path, transparency=0)
    elif kind in ("one-frame.gif", "ten-frames.gif", "three-frames.png", "animated.webp"):
        save_animation(path, {"one": 1, "ten": 10, "thr": 3, "ani": 4}[kind[:3]])
    elif kind in ("one-frame.mp4", "odd-33x17.mp4", "240fps.mp4"):
        frames = {"one": 1, "odd": 5, "240": 12}[kind[:3]]
        h, w = (17, 33) if kind.startswith("odd") else (32, 32)
        write_video(path, torch.from_numpy(np.stack([gradient(h, w, 9 * i) for i in range(frames)])),
                    fps=240 if kind.startswith("240") else 24)
    elif kind in ("rotated-90.mp4", "rotated-180.mp4"):
        rotated_video(path, 90 if "90" in kind else 180, np.stack([gradient(32, 64, i) for i in range(4)]))
    elif kind in ("empty.mp4", "empty.png"):
        path.write_bytes(b"")
    elif kind == "truncated.mp4":
        write_video(folder / "whole.mp4", torch.from_numpy(np.stack([gradient(32, 32, i) for i in range(8)])), 24)
        data = (folder / "whole.mp4").read_bytes()
        path.write_bytes(data[:len(data) // 2])
    return path


CASES = ["tiny.png", "8x8.png", "4096x8.png", "8x4096.png", "16bit.png", "palette-transparent.gif",
         "one-frame.gif", "ten-frames.gif", "three-frames.png", "animated.webp", "one-frame.mp4", "odd-33x17.mp4",
         "240fps.mp4", "rotated-90.mp4", "rotated-180.mp4", "empty.mp4", "empty.png", "truncated.mp4"]


@pytest.mark.parametrize("kind", CASES)
def test_extreme_media_tokenize_or_are_refused_in_one_line(micro, tmp_path, kind):
    path = make(kind, tmp_path)
    try:
        encoded = micro.tokenize(path, "tokens:8")
    except ElasticTokError as exc:
        assert one_line(str(exc)) and str(path) in str(exc)
        return
    decoded = micro.detokenize(encoded)
    assert torch.isfinite(decoded).all()
    assert decoded.shape[-2:] == micro.config.resolution


def test_an_animated_gif_is_a_video_not_one_still(micro, tmp_path):
    encoded = micro.tokenize(make("ten-frames.gif", tmp_path), "tokens:8")
    assert not encoded.info.is_image and encoded.info.frames == 10 and encoded.info.fps == pytest.approx(10)
    assert encoded.n_blocks == 5  # 10 frames in blocks of 2
    video = micro.detokenize(encoded)
    assert video.shape[0] == 10


def test_an_animated_png_is_a_video_and_an_animated_webp_is_refused(micro, tmp_path):
    assert micro.tokenize(make("three-frames.png", tmp_path), "tokens:8").info.frames == 3
    with pytest.raises(ElasticTokError, match="animated WEBP"):
        micro.tokenize(make("animated.webp", tmp_path), "tokens:8")


@pytest.mark.parametrize("degrees, turns", [(90, 1), (-90, 3), (180, 2)])
def test_rotation_metadata_turns_frames_upright(tmp_path, degrees, turns):
    """A phone's portrait clip is stored as landscape frames with a display rotation; players turn it, and so
    must the reader (else it is cropped on the wrong axis)."""
    frames = np.stack([gradient(32, 64, i) for i in range(4)])
    rotated_video(tmp_path / "clip.mp4", degrees, frames)
    rotated_video(tmp_path / "plain.mp4", 0, frames)  # the same stream, shown as stored
    reader = VideoReader(tmp_path / "clip.mp4")
    shown = reader.read_all()
    plain = VideoReader(tmp_path / "plain.mp4").read_all()
    expected = torch.rot90(plain, turns, dims=(1, 2))
    assert (reader.info.height, reader.info.width) == tuple(expected.shape[1:3])
    assert shown.shape == expected.shape
    assert torch.equal(shown, expected)  # the same decoded pixels, turned


def test_a_portrait_phone_clip_is_tokenized_portrait(micro, tmp_path):
    rotated_video(tmp_path / "phone.mp4", -90, np.stack([gradient(32, 64, i) for i in range(4)]))
    encoded = micro.tokenize(tmp_path / "phone.mp4", "tokens:8")
    assert encoded.info.size == (64, 32)
