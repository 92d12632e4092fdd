"""Quality scores (metrics/quality.py) on real frames: the high-frequency energy that says whether a decode
keeps, loses or invents fine detail."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
import torch.nn.functional as F

from elastictok.media.io import VideoReader
from elastictok.media.transforms import fit_to_resolution, to_model
from elastictok.metrics.quality import high_frequency_energy
from elastictok.models.pretrained import sample_video


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """(4, 3, 64, 64): the first frames of the bundled real clip, in [-1, 1]."""
    return to_model(fit_to_resolution(torch.stack(list(islice(VideoReader(sample_video()), 4))), (64, 64)))


def test_the_whole_band_is_the_signal_energy(frames):
    """Parseval: from radius 0 the band holds all the energy, H * W times the sum of squares."""
    assert high_frequency_energy(frames, band=0.0) == pytest.approx(64 * 64 * frames.pow(2).sum().item(), rel=1e-4)


def test_blur_loses_high_frequencies_and_noise_adds_them(frames):
    blurred = F.avg_pool2d(frames, 3, stride=1, padding=1, count_include_pad=False)
    noisy = frames + 0.2 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))
    source = high_frequency_energy(frames)
    assert 0 < high_frequency_energy(blurred) < 0.5 * source
    assert high_frequency_energy(noisy) > 1.5 * source
    assert high_frequency_energy(frames, band=0.2) > source  # a wider band holds more


def test_what_a_viewer_cannot_see_does_not_count(frames):
    """Values beyond [-1, 1] are clipped first: a decode that overshoots is scored as it is shown."""
    assert high_frequency_energy(frames * 3) == pytest.approx(high_frequency_energy((frames * 3).clamp(-1, 1)))
