"""Training datasets: a folder in memory, batches that depend on their index alone."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from elastictok.training.datasets import MediaCollection, TrainBatches


def test_bad_files_are_skipped_in_training_data(tmp_path, photo_folder):
    (tmp_path / "broken.mp4").write_text("garbage")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "ok.png")
    media = MediaCollection.load([tmp_path, photo_folder / "pan.mp4"], short_side=32)
    assert media.skipped == [str(tmp_path / "broken.mp4")]
    assert len(media.images) == 1 and len(media.videos) == 1
    batches = TrainBatches(media, (32, 32), 2, 2, 3, 0.5, seed=0, length=10)
    for k in range(4):
        batch = batches[k]
        assert batch.shape in {(3, 4, 3, 32, 32), (6, 2, 3, 32, 32)} and batch.abs().max() <= 1
        assert torch.equal(batch, batches[k])  # batch k depends on k alone
