"""The command line: real files in and out, JSON output, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from elastictok.media.io import VideoReader, read_image


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elastictok.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_dir(trained_micro, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    trained_micro.save_pretrained(path)
    return path


def test_help_and_bad_arguments_answer_without_loading_the_library():
    """``--help`` and argument errors come back at once: torch, seconds to import, is not loaded for them."""
    code = ("import contextlib, sys\nfrom elastictok.cli import main\n"
            "for argv in (['--help'], ['encode', '--help'], ['encode', 'x.mp4', '--tokens', 'many']):\n"
            "    with contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "usage: elastictok encode" in run.stdout and "error: argument --tokens" in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "torch loaded: False"


def test_help_lists_the_commands():
    result = cli("--help")
    assert result.returncode == 0
    for command in ("encode", "decode", "reconstruct", "report", "train", "convert-official"):
        assert command in result.stdout
    assert "--threshold" in cli("encode", "--help").stdout


def test_encode_decode_reconstruct(model_dir, photo_folder, tmp_path):
    video, image = photo_folder / "pan.mp4", photo_folder / "photo0.jpg"
    result = cli("encode", str(video), str(image), "-o", str(tmp_path / "tok"), "--model", str(model_dir),
                 "--threshold", "mse:0.1", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    first = lines[0]
    for key in ("input", "blocks", "tokens_per_block", "max_tokens_per_block", "mean_tokens_per_block", "psnr",
                "mse", "seconds"):
        assert key in first
    assert first["blocks"] == 12 and len(first["tokens_per_block"]) == 12  # 24 frames, 2 per block
    assert lines[1]["blocks"] == 1

    assert cli("decode", str(tmp_path / "tok" / "pan.etok"), "-o", str(tmp_path / "pan.mp4"),
               "--model", str(model_dir)).returncode == 0
    reader = VideoReader(tmp_path / "pan.mp4")
    assert len(reader.read_all()) == 24 and reader.fps == pytest.approx(24)
    assert cli("decode", str(tmp_path / "tok" / "photo0.etok"), "-o", str(tmp_path / "photo.png"),
               "--model", str(model_dir)).returncode == 0
    assert read_image(tmp_path / "photo.png").shape == (32, 32, 3)

    result = cli("reconstruct", str(video), "-o", str(tmp_path / "side.mp4"), "--model", str(model_dir),
                 "--tokens", "8", "--no-progress")
    assert result.returncode == 0, result.stderr
    frames = VideoReader(tmp_path / "side.mp4").read_all()
    assert frames.shape[0] == 24 and frames.shape[2] == 2 * frames.shape[1]  # side by side
    assert read_image(tmp_path / "side_tokens.png").shape[0] > 100


def test_encode_with_two_workers_writes_the_same_tokens_in_order(model_dir, photo_folder, tmp_path):
    """Two processes, one thread each, tokenize the inputs; a bad input is named and the rest written."""
    from elastictok.tokenization.tokenfile import read_etok

    inputs = [str(photo_folder / "pan.mp4"), str(photo_folder / "photo0.jpg"), str(photo_folder / "photo1.jpg")]
    common = ["--model", str(model_dir), "--threshold", "mse:0.1", "--json"]
    one = cli("encode", *inputs, "-o", str(tmp_path / "one"), *common)
    two = cli("encode", *inputs, "-o", str(tmp_path / "two"), "--workers", "2", *common)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert [json.loads(line)["input"] for line in two.stdout.splitlines()] == inputs
    # the workers' log lines (resized, target missed) are printed by this process, as one worker's are
    assert "WARNING: " in one.stderr and two.stderr == one.stderr, two.stderr
    for name in ("pan.etok", "photo0.etok", "photo1.etok"):
        a, b = read_etok(tmp_path / "one" / name), read_etok(tmp_path / "two" / name)
        assert torch.equal(a.counts, b.counts) and torch.equal(a.tokens, b.tokens)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    mixed = cli("encode", inputs[1], str(tmp_path / "bad.mp4"), "-o", str(tmp_path / "mixed"), "--workers", "2",
                *common)
    errors = [line for line in mixed.stderr.splitlines() if line.startswith("error:")]  # beside warnings
    assert mixed.returncode == 2 and len(errors) == 1 and "bad.mp4" in errors[0], mixed.stderr
    assert "Traceback" not in mixed.stderr, mixed.stderr
    assert (tmp_path / "mixed" / "photo0.etok").exists() and not (tmp_path / "mixed" / "bad.etok").exists()
    too_many = cli("encode", inputs[1], "-o", str(tmp_path / "x"), "--workers", "999", *common)
    assert too_many.returncode == 2 and "workers must be" in too_many.stderr


@pytest.mark.parametrize("args, message", [
    (["encode", "missing.mp4", "-o", "OUT"], "no such file"),
    (["encode", "IMAGE", "-o", "OUT", "--threshold", "mse"], "bad target"),
    (["encode", "IMAGE", "-o", "OUT", "--threshold", "lpips:0.1"], "unknown metric"),
    (["encode", "IMAGE", "-o", "OUT", "--tokens", "0"], "positive"),
    (["decode", "IMAGE", "-o", "x.mp4"], "not a token file"),
    (["reconstruct", "IMAGE", "-o", "side.mp4"], "write .png"),
])
def test_bad_arguments_give_one_line(model_dir, photo_folder, tmp_path, args, message):
    args = [str(photo_folder / "photo0.jpg") if a == "IMAGE" else str(tmp_path / a) if a in ("OUT", "missing.mp4")
            else a for a in args]
    result = cli(*args, "--model", str(model_dir))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_unknown_model_is_one_line(tmp_path, photo_folder):
    result = cli("encode", str(photo_folder / "photo0.jpg"), "-o", str(tmp_path), "--model", "no-such-model")
    assert result.returncode == 2 and "no model directory or bundled model" in result.stderr


def test_convert_official(tmp_path):
    from pathlib import Path
    fixture = Path(__file__).parent.parent / "fixtures" / "official-parity" / "fsq"
    result = cli("convert-official", str(fixture / "params.streaming"), "--official-config",
                 str(fixture / "config.json"), "-o", str(tmp_path / "converted"), "--no-progress")
    assert result.returncode == 0, result.stderr
    from elastictok import ElasticTok
    assert ElasticTok.from_pretrained(tmp_path / "converted").config.tokens_per_block == 32
    result = cli("convert-official", str(fixture / "params.streaming"), "--preset", "official-fsq-200m",
                 "-o", str(tmp_path / "wrong"), "--no-progress")
    assert result.returncode == 2 and "does not fit config" in result.stderr


def test_decode_without_model_finds_the_bundled_model_the_tokens_name(photo_folder, tmp_path):
    """A token file names its family and config: decode picks the bundled model that made it (here FlexTok's,
    which the default model would refuse)."""
    from elastictok.models.pretrained import bundled_models

    if "flextok" not in bundled_models():
        pytest.skip("the bundled FlexTok model is not in src/elastictok/weights/flextok")
    photo = photo_folder / "photo0.jpg"
    encoded = cli("encode", str(photo), "-o", str(tmp_path), "--model", "flextok", "--tokens", "4", "--no-progress")
    assert encoded.returncode == 0, encoded.stderr
    decoded = cli("decode", str(tmp_path / "photo0.etok"), "-o", str(tmp_path / "back.png"))
    assert decoded.returncode == 0, decoded.stderr
    assert read_image(tmp_path / "back.png").shape[-1] == 3
