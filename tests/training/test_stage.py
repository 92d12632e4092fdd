"""Training a latent input stage alone (training/stage.py, scripts/train_latent_stage.py), and ``stage_from``,
which loads it into a FlexTok that the shared trainer trains with the stage frozen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elastictok import ElasticTokError
from elastictok.models.flextok import FlexTok, LatentStage
from elastictok.training.config import TrainConfig
from elastictok.training.loop import train
from elastictok.training.stage import train_stage

ROOT = Path(__file__).resolve().parents[2]
STAGE = {"input_stage": "latent", "stage_channels": 4, "stage_factors": (2, 4), "stage_width": 16,
         "patch_size": (1, 2, 2)}


def stage_config(folder: Path, out: Path, **overrides) -> TrainConfig:
    """The micro preset's frames (32x32, 2-frame blocks) under a small latent stage."""
    fields = dict(model="flextok-micro", model_overrides=STAGE, data=[str(folder)], out_dir=str(out), steps=4,
                  batch_size=2, n_blocks=2, warmup_steps=1, lr=3e-3, eval_every=10**9, checkpoint_every=10**9,
                  log_every=2, progress=False, bf16=False, seed=3)
    return TrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def trained_stage(photo_folder, tmp_path_factory) -> Path:
    """A stage trained for 12 steps on real photos and a pan: its folder."""
    out = tmp_path_factory.mktemp("stage") / "video-ae"
    cfg = stage_config(photo_folder, out, steps=12, eval_data=[str(photo_folder / "pan.mp4")])
    torch.manual_seed(0)
    train_stage(LatentStage.from_config(cfg.model_config()), cfg, out)
    return out


def test_a_trained_stage_is_saved_with_its_shape_scale_and_record(trained_stage, photo_folder):
    record = json.loads((trained_stage / "stage.json").read_text())
    assert (record["channels"], record["factors"], record["width"]) == (4, [2, 4], 16)
    training = record["training"]
    assert training["steps"] == 12 and training["device"] == "cpu" and 0 < training["mse"] < 1
    assert 10 < training["held_out_psnr"] < 60
    weights = load_file(str(trained_stage / "stage.safetensors"))
    assert weights["scale"].item() == pytest.approx(training["scale"]) and training["scale"] != 1.0
    torch.manual_seed(5)
    fresh = LatentStage(channels=4, width=16)
    assert not torch.equal(fresh.state_dict()["encoder.0.conv.weight"], weights["encoder.0.conv.weight"])
    fresh.load(trained_stage)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights.items())
    with pytest.raises(ElasticTokError, match="holds a latent stage already"):
        cfg = stage_config(photo_folder, trained_stage)
        train_stage(LatentStage.from_config(cfg.model_config()), cfg, trained_stage)


def test_stage_from_loads_the_stage_and_training_leaves_it_as_it_was(trained_stage, photo_folder, tmp_path):
    run = train(stage_config(photo_folder, tmp_path / "run", stage_from=str(trained_stage)))
    model = FlexTok.from_pretrained(run / "model")
    stage = load_file(str(trained_stage / "stage.safetensors"))
    saved = model.stage.state_dict()
    assert saved.keys() == stage.keys() and all(torch.equal(saved[k], stage[k]) for k in stage)
    torch.manual_seed(3)  # the same initial flow as the run had: it did train
    initial = FlexTok(model.config).state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in model.state_dict().items() if not k.startswith("stage."))


def test_stage_from_is_refused_in_one_line_where_it_does_not_fit(trained_stage, photo_folder, tmp_path):
    other = {**STAGE, "stage_width": 32}
    cases = [({"model_overrides": other}, r"another shape \(width 16 there, 32 here\)"),
             ({"model_overrides": {}}, "input_stage is 'pixels'; stage weights load into input_stage 'latent' only"),
             ({"model": "micro", "model_overrides": {}}, "ElasticTok has no input stage to load")]
    for overrides, message in cases:
        with pytest.raises(ElasticTokError, match=message) as refused:
            train(stage_config(photo_folder, tmp_path / "run", stage_from=str(trained_stage), **overrides))
        assert "\n" not in str(refused.value)
        assert not (tmp_path / "run" / "model").exists()
    with pytest.raises(ElasticTokError, match="stage_from and init_from cannot both be set"):
        stage_config(photo_folder, tmp_path / "run", stage_from=str(trained_stage), init_from=str(tmp_path))


def test_the_script_trains_a_stage_and_prints_its_held_out_psnr(photo_folder, tmp_path):
    out = tmp_path / "video-ae"
    command = [sys.executable, str(ROOT / "scripts" / "train_latent_stage.py"), "--data", str(photo_folder),
               "--eval-data", str(photo_folder / "pan.mp4"), "--out", str(out), "--steps", "2", "--batch", "2",
               "--warmup", "1", "--width", "8", "--channels", "4", "--model", "flextok-micro"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "held-out PSNR of the reconstructions:" in result.stdout
    assert json.loads((out / "stage.json").read_text())["width"] == 8
    again = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: {out} holds a latent stage already; set another output folder"]
