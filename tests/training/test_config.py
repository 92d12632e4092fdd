"""The training config refuses what it cannot run, in one line, before any work (``training/config.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from elastictok import ElasticTokError
from elastictok.training.config import TrainConfig


def test_defaults_and_presets_of_both_families_are_accepted():
    assert TrainConfig().betas == (0.9, 0.95)
    assert TrainConfig(model="flextok-micro", model_overrides={"registers": 4}).model_config().registers == 4
    assert TrainConfig(betas=[0.8, 0.9]).betas == (0.8, 0.9)  # YAML lists become tuples


@pytest.mark.parametrize("fields, word", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
    ({"lr": math.inf}, "lr"), ({"lr": 0}, "lr"), ({"fps": -1.0}, "fps"),
    ({"data": 5}, "data"), ({"eval_keep_fractions": [0.5, 1.5]}, "eval_keep_fractions"),
    ({"betas": (0.9, 1.0)}, "betas"), ({"min_lr_ratio": -0.1}, "min_lr_ratio"), ({"stop_at": 0}, "stop_at"),
    ({"model": "no-such-preset"}, "no-such-preset"), ({"model_overrides": {"width": "wide"}}, "width"),
    ({"bf16": "yes"}, "bf16"), ({"seed": None}, "seed"), ({"device": "meta"}, "device"), ({"device": "xla"}, "device"),
])
def test_bad_fields_are_refused_in_one_line(fields, word):
    with pytest.raises(ElasticTokError, match=word) as info:
        TrainConfig(**fields)
    assert "\n" not in str(info.value)


def test_yaml_reading_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: micro\nsteps: -2\nbatch_size: x\n")
    with pytest.raises(ElasticTokError, match="batch_size must be a whole number"):  # types first, then ranges
        TrainConfig.from_yaml(path)
    path.write_text("model: micro\nsteps: -2\nlog_every: 0\n")
    with pytest.raises(ElasticTokError, match="steps must be at least 1.*log_every must be at least 1"):
        TrainConfig.from_yaml(path)
    assert TrainConfig.from_yaml(path, steps=3, log_every=1).steps == 3  # overrides are checked the same way


def test_yaml_quirks_read_as_meant(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: micro\nlr: 1e-3\neval_data:\nmodel_overrides:\n")  # YAML 1.1: 1e-3 is text
    cfg = TrainConfig.from_yaml(path)
    assert cfg.lr == 1e-3 and cfg.eval_data == [] and cfg.model_overrides == {}  # empty fields: their defaults
    path.write_text("model: micro\nmodel_overrides: {norm_eps: 1e-6, bottleneck: vae}\n")  # the same inside overrides
    assert TrainConfig.from_yaml(path).model_config().norm_eps == 1e-6
    path.write_text("model: [micro]\nmodel_overrides: {norm_eps: 1e-6}\n")
    with pytest.raises(ElasticTokError, match="model must be text"):
        TrainConfig.from_yaml(path)


def test_a_device_is_not_read_as_a_config(tmp_path):
    (tmp_path / "zeros.yaml").symlink_to("/dev/zero")
    with pytest.raises(ElasticTokError, match="pipe or device"):
        TrainConfig.from_yaml(tmp_path / "zeros.yaml")


def test_a_config_can_come_from_a_pipe():
    """As from a shell's <(sed ...): /dev/fd/N of a pipe some process writes (a pipe nothing writes is refused
    in tests/cli/test_bad_inputs.py)."""
    import os

    read, write = os.pipe()
    os.write(write, b"model: micro\nsteps: 7\n")
    os.close(write)
    try:
        assert TrainConfig.from_yaml(f"/dev/fd/{read}").steps == 7
    finally:
        os.close(read)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_the_run_folder_is_made(tmp_path):
    from elastictok.training.loop import train

    with pytest.raises(ElasticTokError, match="no CUDA device") as info:
        train(TrainConfig(model="micro", data=[str(tmp_path)], out_dir=str(tmp_path / "run"), device="cuda"))
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
