"""Real media in and out, and one clear line for every kind of bad file."""

from __future__ import annotations

import os
import stat

import av
import numpy as np
import pytest
import torch
from PIL import Image

from elastictok import ElasticTokError
from elastictok.media.io import VideoReader, VideoWriter, read_image, write_image, write_video
from elastictok.media.transforms import fit_to_resolution, from_model, to_model


def test_images_of_every_mode_become_rgb(tmp_path):
    grey = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "pic.webp")
    for name in ("grey.png", "rgba.png", "deep.png", "pic.webp"):
        image = read_image(tmp_path / name)
        assert image.shape == (48, 64, 3) and image.dtype == torch.uint8, name
    assert torch.equal(read_image(tmp_path / "deep.png")[..., 0], torch.from_numpy(grey))
    assert read_image(tmp_path / "rgba.png")[0, 0].tolist() == [200, 0, 0]


def test_video_round_trip(tmp_path):
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (1, 8, 8, 3), dtype=np.uint8))
    frames = fit_to_resolution(frames, (64, 96)).repeat(12, 1, 1, 1)
    frames[6:] = 255 - frames[6:]
    write_video(tmp_path / "clip.mp4", frames, fps=12)
    reader = VideoReader(tmp_path / "clip.mp4")
    decoded = reader.read_all()
    assert reader.fps == pytest.approx(12) and decoded.shape == frames.shape
    assert (decoded.float() - frames.float()).abs().mean() < 6
    assert len(list(VideoReader(tmp_path / "clip.mp4", fps=6))) == 6


def test_range_conversions_round_trip():
    frames = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8)
    x = to_model(frames)
    assert x.shape == (3, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(from_model(x), frames)


def test_fit_to_resolution_crop_and_pad():
    frames = torch.full((2, 50, 100, 3), 255, dtype=torch.uint8)
    assert fit_to_resolution(frames, (32, 32)).shape == (2, 32, 32, 3)
    padded = fit_to_resolution(frames, (32, 32), mode="pad")
    assert padded.shape == (2, 32, 32, 3) and padded[:, 0].max() == 0 and padded[:, 16].min() == 255


def _audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        container.mux(stream.encode())


def test_bad_files_give_one_line_errors(tmp_path, photo_folder):
    (tmp_path / "text.mp4").write_text("this is not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("nor an image")
    whole = (photo_folder / "pan.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 3])
    _audio_only(tmp_path / "audio.m4a")
    cases = {"text.mp4": "not a readable video", "empty.mp4": "not a readable video",
             "text.jpg": "not a readable image", "audio.m4a": "no video stream",
             "absent.mp4": "no such file", "cut.mp4": "not a readable video|no decodable"}
    for name, message in cases.items():
        with pytest.raises(ElasticTokError, match=message) as info:
            if name.endswith((".jpg",)):
                read_image(tmp_path / name)
            else:
                VideoReader(tmp_path / name).read_all()
        assert "\n" not in str(info.value), name


def test_image_writer_is_atomic_and_checks_suffix(tmp_path):
    frame = torch.zeros(8, 8, 3, dtype=torch.uint8)
    write_image(tmp_path / "a.png", frame)
    assert read_image(tmp_path / "a.png").shape == (8, 8, 3)
    with pytest.raises(ElasticTokError, match="must end in"):
        write_image(tmp_path / "a.gif2", frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary left behind


class InterruptedFlush:
    """The H.264 stream, but Ctrl-C lands while the encoder flushes its last frames (the file's final 0.2 s)."""

    def __init__(self, stream):
        self.stream = stream

    def encode(self, frame=None):
        if frame is None:
            raise KeyboardInterrupt
        return self.stream.encode(frame)


def test_a_video_interrupted_while_it_is_flushed_is_not_written(tmp_path):
    frames = torch.randint(0, 255, (8, 32, 32, 3), dtype=torch.uint8)
    with pytest.raises(KeyboardInterrupt), VideoWriter(tmp_path / "x.mp4", 24) as writer:
        writer.write(frames)
        writer._stream = InterruptedFlush(writer._stream)
    assert list(tmp_path.iterdir()) == []  # not a truncated x.mp4, and no temporary


def test_writers_refuse_to_replace_a_device_or_folder(tmp_path):
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    for name in ("folder.png", "pipe.png"):
        with pytest.raises(ElasticTokError, match="is a (directory|pipe or device)"):
            write_image(tmp_path / name, torch.zeros(8, 8, 3, dtype=torch.uint8))
    assert (tmp_path / "folder.png").is_dir() and stat.S_ISFIFO((tmp_path / "pipe.png").stat().st_mode)


@pytest.mark.parametrize("suffix, codec", [(".webm", "libvpx-vp9"), (".mkv", "libx264"), (".avi", "mpeg4")])
def test_containers_and_codecs(tmp_path, suffix, codec):
    path = tmp_path / f"clip{suffix}"
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    fmt = {".webm": "webm", ".mkv": "matroska", ".avi": "avi"}[suffix]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    decoded = VideoReader(path).read_all()
    assert decoded.shape == (6, 32, 48, 3)


def test_fps_resampling_up_and_down(photo_folder):
    source = VideoReader(photo_folder / "pan.mp4")  # 24 frames at 24 fps
    assert len(list(VideoReader(photo_folder / "pan.mp4", fps=12))) == 12
    doubled = list(VideoReader(photo_folder / "pan.mp4", fps=48))
    assert len(doubled) == 48 and torch.equal(doubled[0], doubled[1])
    assert source.fps == pytest.approx(24)


def test_streamed_blocks_pad_the_tail_and_refuse_tiny_media(photo_folder, tmp_path):
    from elastictok.media.blocks import iter_media_blocks
    info, blocks = iter_media_blocks(photo_folder / "pan.mp4", (32, 32), 5)
    blocks = list(blocks)
    assert len(blocks) == 5 and info.frames == 24 and torch.equal(blocks[-1][3], blocks[-1][4])
    Image.fromarray(np.zeros((6, 40, 3), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(ElasticTokError, match="smaller than one 8x8 patch"):
        iter_media_blocks(tmp_path / "thin.png", (32, 32), 2, min_size=8)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ElasticTokError, match="not an image or video"):
        iter_media_blocks(tmp_path / "notes.txt", (32, 32), 2)
