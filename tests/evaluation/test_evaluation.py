"""The paper's measurement: report fields, the interpolation behind the token saving, plots, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elastictok.evaluation.measurement import evaluate_models, fraction_at_share, write_report
from elastictok.tokenization.targets import parse_target


def test_fraction_at_share_interpolates_and_reports_unreachable():
    curve = [(0.25, 0.2), (0.5, 0.6), (1.0, 0.8)]
    assert fraction_at_share(curve, 0.1) == 0.25
    assert fraction_at_share(curve, 0.4) == pytest.approx(0.375)
    assert fraction_at_share(curve, 0.8) == 1.0
    assert fraction_at_share(curve, 0.9) is None


def test_report_and_plots(trained_micro, micro, photo_folder, tmp_path):
    inputs = [str(photo_folder / "pan.mp4"), str(photo_folder / "photo0.jpg")]
    thresholds = [parse_target("mse:0.05"), parse_target("mse:0.2")]
    report = evaluate_models(trained_micro, [micro, trained_micro], inputs, thresholds, [0.0625, 0.5, 1.0],
                             progress=False, baseline_names=["untrained", "trained"])
    assert report["blocks"] == 12 + 1
    # Several baselines: the curve is the strongest of them at each length and threshold.
    for i, point in enumerate(report["baseline_fixed"]):
        for name, share in point["share_meeting"].items():
            assert share == max(curve[i]["share_meeting"][name] for curve in report["baselines"].values())
    assert report["baselines"]["trained"] == report["elastic_fixed"]
    assert [p["tokens_per_block"] for p in report["baseline_fixed"]] == [2, 16, 32]
    for name, row in report["thresholds"].items():
        assert 0 < row["elastic_tokens_fraction"] <= 1 and 0 <= row["elastic_share_meeting"] <= 1
        if row["baseline_tokens_fraction_at_equal_share"] is not None:
            assert row["token_saving"] == pytest.approx(
                row["baseline_tokens_fraction_at_equal_share"] / row["elastic_tokens_fraction"])
        assert len(report["tokens_over_time"][name][inputs[0]]) == 12
    loose = report["thresholds"]["mse:0.2"]
    assert loose["elastic_tokens_fraction"] <= report["thresholds"]["mse:0.05"]["elastic_tokens_fraction"]
    files = write_report(report, tmp_path / "eval")
    assert {f.name for f in files} == {"report.json", "summary.md", "fig4_share_vs_tokens.png", "rate_distortion.png",
                                       "tokens_over_time_pan.png"}
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    for key in ("elastic_tokens_fraction", "elastic_share_meeting", "baseline_tokens_fraction_at_equal_share",
                "token_saving", "elastic_psnr", "elastic_ssim"):
        assert key in saved["thresholds"]["mse:0.05"]
    assert "psnr" in saved["baseline_fixed"][0] and "ssim" in saved["baseline_fixed"][0]
    table = (tmp_path / "eval" / "summary.md").read_text().splitlines()
    assert len(table) == 4 + len(thresholds) and table[4].startswith("| mse:0.05 (19.0 dB) |")


def test_eval_command(trained_micro, micro, photo_folder, tmp_path):
    trained_micro.save_pretrained(tmp_path / "elastic")
    micro.save_pretrained(tmp_path / "baseline")
    result = subprocess.run([sys.executable, "-m", "elastictok.cli", "eval", str(photo_folder / "photo1.jpg"),
                             "--model", str(tmp_path / "elastic"), "--baseline", str(tmp_path / "baseline"),
                             "--thresholds", "mse:0.1", "--fractions", "0.5,1", "--out", str(tmp_path / "e"),
                             "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| mse:0.1 (16.0 dB) |" in result.stdout and (tmp_path / "e" / "report.json").exists()
    bad = subprocess.run([sys.executable, "-m", "elastictok.cli", "eval", str(photo_folder / "photo1.jpg"),
                          "--model", str(tmp_path / "elastic"), "--baseline", str(tmp_path / "baseline"),
                          "--thresholds", "tokens:4"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "metric:value" in bad.stderr
