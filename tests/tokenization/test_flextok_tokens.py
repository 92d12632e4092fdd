"""Tokenizing with a FlexTok model: the same targets and searches, .etok files that record the family."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from elastictok import ElasticTokError, detokenize, read_etok, tokenize, write_etok
from elastictok.models.flextok import FlexTok, FlexTokConfig


@pytest.fixture(scope="module")
def flex() -> FlexTok:
    """flextok-micro with 4 Euler steps and perturbed weights (adaLN-zero would otherwise output zeros)."""
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig.from_preset("flextok-micro", steps=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_fixed_count_round_trips_through_an_etok_file(flex, photo_folder, tmp_path):
    encoded = tokenize(flex, photo_folder / "pan.mp4", "tokens:3")
    assert encoded.family == "flextok" and encoded.counts.tolist() == [3] * 12
    write_etok(tmp_path / "pan.etok", encoded, flex.codebook_size)
    loaded = read_etok(tmp_path / "pan.etok")
    assert loaded.family == "flextok" and torch.equal(loaded.tokens, encoded.tokens)
    video = detokenize(flex, tmp_path / "pan.etok")
    assert video.shape == (24, 3, 32, 32) and video.isfinite().all()
    torch.testing.assert_close(detokenize(flex, loaded), video, rtol=0, atol=0)  # seeded: deterministic
    batched = detokenize(flex, [loaded, encoded])  # decoded together: the same frames
    torch.testing.assert_close(batched[1], video, rtol=0, atol=1e-5)


def test_threshold_picks_the_fewest_tokens_that_pass(flex, photo_folder):
    r = flex.config.tokens_per_block
    loose = tokenize(flex, photo_folder / "pan.mp4", "mse:10")
    strict = tokenize(flex, photo_folder / "pan.mp4", "mse:1e-9")
    assert loose.counts.tolist() == [flex.config.min_tokens] * 12 and strict.counts.tolist() == [r] * 12
    middle = float(tokenize(flex, photo_folder / "pan.mp4", "tokens:2").scores.median())
    encoded = tokenize(flex, photo_folder / "pan.mp4", f"mse:{middle}", search="full")
    assert ((encoded.scores <= middle) | (encoded.counts == r)).all()
    assert encoded.passes > 0 and encoded.evaluations >= 12


def test_tokens_of_another_family_are_refused_in_one_line(flex, micro, real_video):
    encoded = tokenize(flex, real_video, "tokens:2")[0]
    with pytest.raises(ElasticTokError, match="come from a model of the flextok family") as error:
        detokenize(micro, encoded)
    assert "\n" not in str(error.value)
    with pytest.raises(ElasticTokError, match="come from a model of the elastictok family"):
        detokenize(flex, tokenize(micro, real_video, "tokens:8")[0])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elastictok.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_picks_the_family_from_the_model_directory(flex, photo_folder, tmp_path):
    flex.save_pretrained(tmp_path / "model")
    result = cli("encode", str(photo_folder / "pan.mp4"), "-o", str(tmp_path / "tok"), "--model",
                 str(tmp_path / "model"), "--threshold", "mse:0.2", "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["blocks"] == 12
    result = cli("decode", str(tmp_path / "tok" / "pan.etok"), "-o", str(tmp_path / "pan.mp4"), "--model",
                 str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr


def test_eval_compares_the_families_either_way(micro, photo_folder, tmp_path):
    torch.manual_seed(0)
    flex = FlexTok(FlexTokConfig.from_preset("flextok-micro", registers=micro.config.tokens_per_block, steps=2))
    flex.save_pretrained(tmp_path / "flex")
    micro.save_pretrained(tmp_path / "elastic")
    for model, baseline, label in (("flex", "elastic", "FlexTok"), ("elastic", "flex", "ElasticTok")):
        result = cli("eval", str(photo_folder / "photo1.jpg"), "--model", str(tmp_path / model), "--baseline",
                     str(tmp_path / baseline), "--thresholds", "mse:0.1", "--fractions", "0.5,1", "--out",
                     str(tmp_path / f"eval-{model}"), "--no-progress")
        assert result.returncode == 0, result.stderr
        assert f"| {label} tokens |" in result.stdout
        report = json.loads((tmp_path / f"eval-{model}" / "report.json").read_text())
        assert report["model"]["family"] == ("flextok" if model == "flex" else "elastictok")
        assert [p["tokens_per_block"] for p in report["baselines"][str(tmp_path / baseline)]] == [16, 32]
