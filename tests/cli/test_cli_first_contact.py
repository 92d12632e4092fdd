"""What a new user of the command line sees: --version, whether blocks met the target (text, JSON and a
warning when it is out of reach), no progress floods in logs, sizes given back, training without YAML."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from elastictok.cli import main
from elastictok.tokenization.tokenfile import read_etok
from elastictok.training.config import TrainConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from elastictok import ElasticTok, ElasticTokConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(path)
    return path


@pytest.fixture
def wide_photo(tmp_path):
    y, x = np.mgrid[0:40, 0:100]
    picture = np.stack([2.5 * x, 6 * y, 128 + 0 * x], -1).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "wide.png")
    return tmp_path / "wide.png"


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == "elastictok 0.1.0"


def test_encode_says_how_many_blocks_met_and_warns_when_out_of_reach_without_flooding_logs(model_dir, wide_photo,
                                                                                            tmp_path):
    run = subprocess.run([sys.executable, "-m", "elastictok.cli", "encode", str(wide_photo), "-o", str(tmp_path / "t"),
                          "--model", str(model_dir), "--threshold", "psnr:90"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert ": 1 block, " in run.stdout and "0 of 1 block met psnr:90" in run.stdout
    assert "psnr:90, out of this model's reach: the best block reached psnr" in run.stderr
    assert "100x40 resized and centre-cropped to the model's 32x32" in run.stderr
    assert "\r" not in run.stderr  # stderr is a pipe here: no progress bar


def test_json_carries_met_per_block(model_dir, tmp_path, capsys):
    frames = [np.full((32, 32, 3), 40 * t, np.uint8) for t in range(6)]
    from elastictok.media.io import write_video

    write_video(tmp_path / "clip.mp4", torch.from_numpy(np.stack(frames)), fps=10)
    assert main(["encode", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "t"), "--model", str(model_dir),
                 "--threshold", "mse:0.2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["target"] == "mse:0.2" and len(summary["met"]) == summary["blocks"] == 3
    assert summary["met"] == [score <= 0.2 for score in summary["scores"]]
    assert summary["blocks_met"] == sum(summary["met"])


def test_decode_gives_back_the_source_size_by_choice(model_dir, wide_photo, tmp_path, capsys):
    assert main(["encode", str(wide_photo), "-o", str(tmp_path / "t"), "--model", str(model_dir), "--fit", "pad"]) == 0
    tokens = tmp_path / "t" / "wide.etok"
    assert read_etok(tokens).info.fit == "pad"
    assert main(["decode", str(tokens), "-o", str(tmp_path / "model.png"), "--model", str(model_dir)]) == 0
    assert "--size source gives back the source's 100x40" in capsys.readouterr().out
    assert main(["decode", str(tokens), "-o", str(tmp_path / "source.png"), "--model", str(model_dir),
                 "--size", "source"]) == 0
    assert Image.open(tmp_path / "model.png").size == (32, 32) and Image.open(tmp_path / "source.png").size == (100, 40)


def test_tokens_of_another_family_are_refused_in_plain_words(model_dir, wide_photo, tmp_path, capsys):
    from elastictok import ElasticTok

    model = ElasticTok.from_pretrained(model_dir)
    encoded = model.tokenize(str(wide_photo), "tokens:8")
    encoded.family = "flextok"
    with pytest.raises(Exception) as caught:
        model.detokenize(encoded)
    message = str(caught.value)
    assert "flextok family" in message and "a elastictok" not in message and "a flextok model" not in message


def test_train_on_a_folder_without_yaml(photo_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(photo_folder), "--preset", "micro", "--steps", "2", "-o", str(out),
                 "--no-progress"]) == 0
    saved = TrainConfig.from_yaml(out / "train_config.yaml")
    assert saved.model == "micro" and saved.data == [str(photo_folder)] and (out / "model" / "config.json").is_file()
    assert main(["train", "--preset", "micro", "-o", str(tmp_path / "none")]) == 2
    assert "--data DIR" in capsys.readouterr().err


def test_minutes_is_the_time_budget(photo_folder, tmp_path):
    from elastictok.cli.main import build_parser

    args = build_parser().parse_args(["train", "--data", str(photo_folder), "--minutes", "5", "-o", str(tmp_path)])
    assert args.max_minutes == 5 and args.out_dir == str(tmp_path)


def test_missing_data_names_what_belongs_there(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "data/corpus/train"), "--preset", "micro", "-o", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "scripts/build_corpus.py" in err


def test_config_typos_get_a_suggestion_and_data_may_be_one_path(tmp_path, capsys):
    (tmp_path / "typo.yaml").write_text("model: micro\nstep: 10\n")
    assert main(["train", "--config", str(tmp_path / "typo.yaml")]) == 2
    assert "step (did you mean steps?)" in capsys.readouterr().err
    (tmp_path / "one.yaml").write_text("model: micro\ndata: my/videos\neval_data: held/out\n")
    cfg = TrainConfig.from_yaml(tmp_path / "one.yaml")
    assert cfg.data == ["my/videos"] and cfg.eval_data == ["held/out"]
