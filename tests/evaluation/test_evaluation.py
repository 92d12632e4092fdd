"""The measurement: report fields, the interpolation behind the saving, models compared at equal bits, codec
anchors, thresholds from the model's own quality, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from elastictok.evaluation.measurement import EvalRun, evaluate_models, fraction_at_share, write_report
from elastictok.models.flextok import FlexTok, FlexTokConfig
from elastictok.tokenization.targets import parse_target


def test_fraction_at_share_interpolates_and_reports_unreachable():
    curve = [(0.25, 0.2), (0.5, 0.6), (1.0, 0.8)]
    assert fraction_at_share(curve, 0.1) == 0.25
    assert fraction_at_share(curve, 0.4) == pytest.approx(0.375)
    assert fraction_at_share(curve, 0.8) == 1.0
    assert fraction_at_share(curve, 0.9) is None
    assert fraction_at_share([(1.0, 0.9), (2.0, 0.5)], 0.7) == 1.0  # a point counts at every rate above it


@pytest.fixture(scope="module")
def flex_baseline():
    torch.manual_seed(0)
    return FlexTok(FlexTokConfig.from_preset("flextok-micro")).eval()


def test_report_compares_families_at_equal_bits_beside_the_codecs(trained_micro, flex_baseline, photo_folder,
                                                                   tmp_path):
    inputs = [str(photo_folder / "pan.mp4"), str(photo_folder / "photo0.jpg")]
    thresholds = [parse_target("mse:0.05"), parse_target("mse:0.2")]
    report = evaluate_models(trained_micro, [flex_baseline, trained_micro], inputs, thresholds,
                             EvalRun(fractions=(0.0625, 0.5, 1.0), progress=False), baseline_names=["flex", "trained"])
    assert report["blocks"] == 12 + 1 and report["pixels_per_block"] == 2 * 32 * 32
    assert report["baselines"]["trained"] == report["elastic_fixed"]
    assert [p["tokens_per_block"] for p in report["baselines"]["flex"]] == [1, 4, 8]  # its own grid
    assert [p["tokens_per_block"] for p in report["elastic_fixed"]] == [2, 16, 32]
    for curve in report["baselines"].values():  # the best baseline curve is on or above each baseline
        for point in curve:
            assert any(b["bits_per_block"] <= point["bits_per_block"] and b["psnr"] >= point["psnr"]
                       for b in report["baseline_fixed"])
    assert report["baseline_models"]["flex"]["label"] == "FlexTok" and report["model"]["training"]["steps"] == 150
    assert set(report["anchors"]) == {"H.264", "JPEG"}
    for codec, curve in report["anchors"].items():
        bpps = [p["bpp"] for p in curve]
        assert all(b > 0 for b in bpps) and curve[-1]["psnr"] > curve[0]["psnr"]  # a real rate-distortion sweep
    for name, row in report["thresholds"].items():
        assert 0 < row["elastic_tokens_fraction"] <= 1 and 0 <= row["elastic_share_meeting"] <= 1
        bits = row["elastic_tokens_fraction"] * 32 * math.log2(trained_micro.codebook_size)
        assert row["elastic_bits_per_block"] == pytest.approx(bits)
        assert row["raw_bits_per_block"] == pytest.approx(row["elastic_bits_per_block"])
        assert 0 < row["entropy_bits_per_block"] < row["raw_bits_per_block"]  # a real stream has structure
        if row["baseline_bits_at_equal_share"] is not None:
            assert row["token_saving"] == pytest.approx(row["baseline_bits_at_equal_share"]
                                                        / row["elastic_bits_per_block"])
        assert len(report["tokens_over_time"][name][inputs[0]]) == 12
    files = write_report(report, tmp_path / "eval")
    assert {f.name for f in files} == {"report.json", "summary.md", "fig4_share_vs_bits.png", "rate_distortion.png",
                                       "tokens_over_time_pan.png"}
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "psnr" in saved["baseline_fixed"][0] and "H.264" in saved["thresholds"]["mse:0.05"]["anchors_at_equal_bits"]
    table = (tmp_path / "eval" / "summary.md").read_text()
    assert "| MSE ≤ 0.05 (19.0 dB) |" in table and "| FlexTok flex | 8 |" in table
    assert "150 steps" in table  # the training each model had, beside it


def test_default_thresholds_come_from_the_models_own_quality(trained_micro, photo_folder):
    inputs = [str(photo_folder / "pan.mp4")]
    report = evaluate_models(trained_micro, [], inputs, None, EvalRun(fractions=(0.5, 1.0), progress=False))
    all_tokens = np.array(report["elastic_fixed"][-1]["psnr"])
    assert report["baselines"] == {} and 1 <= len(report["thresholds"]) <= 5
    shares = [row["elastic_share_meeting"] for row in report["thresholds"].values()]
    assert max(shares) >= 0.5  # the model's own quality puts thresholds within its reach
    for name, row in report["thresholds"].items():
        assert name.startswith("psnr:") and row["elastic_blocks_meeting"] == round(row["elastic_share_meeting"] * 12)
    assert all_tokens > 0


def test_eval_command_needs_no_baseline(trained_micro, photo_folder, tmp_path):
    trained_micro.save_pretrained(tmp_path / "model")
    result = subprocess.run([sys.executable, "-m", "elastictok.cli", "eval", str(photo_folder / "photo1.jpg"),
                             "--model", str(tmp_path / "model"), "--fractions", "0.5,1", "-o", str(tmp_path / "e"),
                             "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| PSNR ≥" in result.stdout and "of 1 (" in result.stdout and (tmp_path / "e" / "report.json").exists()
    bad = subprocess.run([sys.executable, "-m", "elastictok.cli", "eval", str(photo_folder / "photo1.jpg"),
                          "--model", str(tmp_path / "model"), "--thresholds", "tokens:4", "--out", str(tmp_path / "f")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "metric:value" in bad.stderr
