"""Training datasets built on media: a folder decoded into memory, batches made from a batch index alone."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ElasticTokError
from ..media.io import VideoReader, is_video, list_media, read_image
from ..media.transforms import fit_to_resolution, resize_short_side, to_model
from ..utils.blocks import image_as_block
from ..utils.seeds import stable_seed

log = logging.getLogger(__name__)


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
            clips = [image_as_block(random_crop(self.media.items[i][:1], self.resolution, rng), self.fpb)
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
            samples.append(to_model(image_as_block(fit_to_resolution(item, resolution), frames_per_block)))
            continue
        last = item.shape[0] - frames_per_block
        for start in np.linspace(0, max(last, 0), clips_per_video).round().astype(int):
            if start + frames_per_block <= item.shape[0]:
                samples.append(to_model(fit_to_resolution(item[start:start + frames_per_block], resolution)))
    return samples


def spaced_video_clips(paths: list[str], resolution: tuple[int, int], frames: int, max_clips: int) -> torch.Tensor:
    """(N, frames, 3, H, W): ``eval_clips`` of ``frames`` frames from the videos in ``paths`` at least that long
    (images and shorter videos left out), at most ``max_clips`` of them, evenly spaced over the list (so over
    the videos). What the benchmarks score a model on."""
    media = MediaCollection.load(paths, short_side=min(resolution))
    media.items = [item for item in media.items if item.shape[0] >= frames]
    clips = eval_clips(media, resolution, frames)
    if not clips:
        raise ElasticTokError(f"no video in {' '.join(paths)} has {frames} frames")
    picked = torch.linspace(0, len(clips) - 1, min(max_clips, len(clips))).round().long().unique()
    return torch.stack([clips[i] for i in picked.tolist()])
