"""Shared fixtures: small models and real images (scikit-image's bundled photos)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig
from elastictok.media.io import write_video
from elastictok.media.transforms import fit_to_resolution, to_model

# A shell starts a background job with Ctrl-C ignored, and the processes the interrupt tests start
# would inherit that: they test Ctrl-C, so they get it as a terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def micro() -> ElasticTok:
    torch.manual_seed(0)
    return ElasticTok(ElasticTokConfig.from_preset("micro")).eval()


@pytest.fixture
def micro_vae() -> ElasticTok:
    torch.manual_seed(0)
    return ElasticTok(ElasticTokConfig.from_preset("micro", bottleneck="vae", name="micro-vae")).eval()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test's own process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_photos() -> list[np.ndarray]:
    skdata = pytest.importorskip("skimage.data", reason="scikit-image (a dev extra) provides the real test photos")
    return [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """A folder of real photos and a real-content video (a slow pan across a photo)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("media")
    photos = real_photos()
    for i, photo in enumerate(photos[1:]):
        Image.fromarray(photo).save(folder / f"photo{i}.jpg", quality=95)
    pan = torch.from_numpy(photos[0])  # 512x512
    frames = torch.stack([pan[100:356, 4 * t:4 * t + 256] for t in range(24)])
    write_video(folder / "pan.mp4", frames, fps=24)
    return folder


@pytest.fixture
def real_video(micro) -> torch.Tensor:
    """(1, 6, 3, 32, 32): three micro blocks of a real photo panning."""
    photo = torch.from_numpy(real_photos()[0])
    frames = torch.stack([photo[60:460, 8 * t:8 * t + 400] for t in range(6)])
    return to_model(fit_to_resolution(frames, micro.config.resolution))[None]


@pytest.fixture(scope="session")
def trained_micro(photo_folder, tmp_path_factory) -> ElasticTok:
    """The micro preset trained for a few seconds on real photos: quality rises with the token count."""
    from elastictok.training.config import TrainConfig
    from elastictok.training.loop import train

    out = tmp_path_factory.mktemp("trained-micro")
    cfg = TrainConfig(model="micro", data=[str(photo_folder)], out_dir=str(out), steps=150, batch_size=4, n_blocks=2,
                      warmup_steps=10, lr=5e-3, eval_every=10**9, checkpoint_every=10**9, log_every=50,
                      progress=False, bf16=False, seed=0)
    return ElasticTok.from_pretrained(train(cfg) / "model")
