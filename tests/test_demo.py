"""`make demo`'s script on a small model and clip: its stages, and whether blocks met the target, are said."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from elastictok import ElasticTok, ElasticTokConfig
from elastictok.media.io import write_video

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def test_demo_says_its_stages_and_how_many_blocks_met(tmp_path):
    torch.manual_seed(0)
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(tmp_path / "model")
    y, x = np.mgrid[0:48, 0:48]
    frames = np.stack([np.stack([(5 * x + 3 * t) % 256, 5 * y, 100 + 0 * x], -1) for t in range(6)]).astype(np.uint8)
    write_video(tmp_path / "clip.mp4", torch.from_numpy(frames), fps=10)
    run = subprocess.run([sys.executable, "-u", str(DEMO), "--model", str(tmp_path / "model"), "--video",
                          str(tmp_path / "clip.mp4"), "--threshold", "mse:0.0001", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for line in ("torch threads:", "[1/4] loading", "[2/4] tokenizing", "[3/4] side-by-side", "[4/4] the report",
                 "0 of 3 blocks met mse:0.0001"):
        assert line in run.stdout, line
    assert "out of this model's reach" in run.stderr
    assert (tmp_path / "out" / "report.html").is_file()
