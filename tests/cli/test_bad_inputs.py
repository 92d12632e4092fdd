"""Nothing a user feeds the CLI breaks it.

The suite builds its own corpus of bad media, bad token files and bad arguments and drives them
through ``elastictok.cli.main`` in-process, under a timer that turns a hang into a failure. Every
refusal must be: exit code 2, exactly one line on stderr saying what is wrong, no traceback, and
nothing left behind (no partial output, no hidden temporary file, no empty output folder). Where a
user would want the rest processed (one bad input among many, a corrupt stretch of a video) the
run says what it skipped and writes the rest.
"""

from __future__ import annotations

import importlib
import io
import os
import json
import math
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import traceback
import zlib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from elastictok import ElasticTok, ElasticTokConfig, ElasticTokError
from elastictok.cli import main
from elastictok.media.io import VideoReader, write_video
from elastictok.models.pretrained import sample_video
from elastictok.tokenization.tokenfile import _header_and_tensors, read_etok

def case(id: str, *values):
    return pytest.param(*values, id=id)


# ---- running the CLI --------------------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the timer; a BaseException so that no ``except Exception`` in the library swallows it."""


@dataclass
class Run:
    argv: list[str]
    code: int | None
    out: str
    err: str
    crash: str | None  # the traceback when main() raised, or "hang"

    def __str__(self) -> str:
        return (f"argv {self.argv}\nexit {self.code}\nstdout {self.out[-800:]!r}\nstderr {self.err[-800:]!r}\n"
                f"{self.crash or ''}")


def cli(*args, timeout: float = 60) -> Run:
    """``elastictok ARGS`` in this process; a run longer than ``timeout`` seconds counts as a hang."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    code, crash = None, None

    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Hang:
        crash = f"hang: still running after {timeout} s"
    except BaseException:  # noqa: BLE001 - any exception out of main() is a traceback for the user
        crash = traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return Run(argv, code, out.getvalue(), err.getvalue(), crash)


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_refused(run: Run, *words: str) -> str:
    """Exit 2, one ``error:`` line on stderr containing every one of ``words`` (case-insensitive)."""
    assert run.crash is None, str(run)
    assert run.code == 2, str(run)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), str(run)
    assert "Traceback" not in run.err, str(run)
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not named in {lines[0]!r}"
    return lines[0]


def assert_nothing_left(root: Path, before: set[str]) -> None:
    after = snapshot(root)
    assert after == before, f"left behind: {sorted(after - before)}; removed: {sorted(before - after)}"


def no_temporaries(*roots: Path) -> None:
    leftovers = [str(p) for root in roots for p in root.rglob(".*.tmp")]
    assert not leftovers, f"temporary files left: {leftovers}"


# ---- the corpus ---------------------------------------------------------------------------------------
def bomb_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit PNG of width x height black pixels: a few KB on disk, gigabytes once decoded to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then zero bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def audio_only_mp4(path: Path) -> bool:
    import av

    try:
        with av.open(str(path), "w") as container:
            stream = container.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
    except Exception:  # noqa: BLE001 - an FFmpeg build without an AAC encoder: the case is skipped
        return False
    return True


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Good and bad media, written once per module."""
    from PIL import Image

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(13)
    street = sample_video()  # 80 frames of 128x128 at 10 fps
    frames = VideoReader(street).read_all()
    paths: dict[str, Path] = {}

    def put(name: str, data: bytes) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    write_video(root / "good.mp4", frames[:16], fps=10)
    paths["good_mp4"] = root / "good.mp4"
    Image.fromarray(frames[40].numpy()).save(root / "good.png")
    paths["good_png"] = root / "good.png"
    video_bytes, png_bytes = paths["good_mp4"].read_bytes(), paths["good_png"].read_bytes()
    paths["zero_mp4"] = put("zero.mp4", b"")
    paths["zero_png"] = put("zero.png", b"")
    paths["trunc_mp4"] = put("trunc.mp4", video_bytes[: len(video_bytes) * 2 // 5])
    paths["stub_mp4"] = put("stub.mp4", video_bytes[:100])
    paths["trunc_png"] = put("trunc.png", png_bytes[: len(png_bytes) // 2])
    paths["garbage_mp4"] = put("garbage.mp4", rng.randbytes(4096))
    paths["garbage_png"] = put("garbage.png", rng.randbytes(4096))
    paths["text_jpg"] = put("text.jpg", b"hello, I am not a picture\n")
    paths["video_as_png"] = put("video-named.png", video_bytes)
    paths["tiny_png"] = root / "tiny.png"
    Image.new("RGB", (4, 4)).save(paths["tiny_png"])
    paths["notes_txt"] = put("notes.txt", b"some notes\n")
    paths["bomb_png"] = root / "bomb.png"
    bomb_png(paths["bomb_png"], 20000, 10000)
    paths["dir_mp4"] = root / "folder.mp4"
    paths["dir_mp4"].mkdir()
    paths["folder"] = root / "folder"
    paths["folder"].mkdir()
    paths["missing_mp4"] = root / "missing.mp4"
    paths["audio_mp4"] = root / "audio.mp4"
    if not audio_only_mp4(paths["audio_mp4"]):
        del paths["audio_mp4"]
    # 4 KB of garbage over the middle of the real clip: a corrupt stretch, the rest intact
    damaged = bytearray(street.read_bytes())
    middle = len(damaged) // 2
    damaged[middle:middle + 4096] = rng.randbytes(4096)
    paths["street_mp4"] = street
    paths["mid_garbage_mp4"] = put("mid-garbage.mp4", bytes(damaged))
    # the same stem as an image and a video; the same name in two folders
    write_video(root / "same" / "a.mp4", frames[:8], fps=10)
    Image.fromarray(frames[20].numpy()).save(root / "same" / "a.png")
    (root / "x").mkdir()
    (root / "y").mkdir()
    Image.fromarray(frames[10].numpy()).save(root / "x" / "b.png")
    Image.fromarray(frames[60].numpy()).save(root / "y" / "b.png")
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The micro preset, untrained: bad inputs need no trained model."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("micro")
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def good_etok(corpus, model_dir, tmp_path_factory) -> Path:
    """A small token file (one image block, 4 tokens) made by the CLI."""
    out = tmp_path_factory.mktemp("etok")
    run = cli("encode", corpus["good_png"], "-o", out, "--model", model_dir, "--tokens", "4", "--no-progress")
    assert run.code == 0, str(run)
    return out / "good.etok"


@pytest.fixture(scope="module")
def good_video_etok(corpus, model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("etok-video")
    run = cli("encode", corpus["good_mp4"], "-o", out, "--model", model_dir, "--tokens", "4", "--no-progress")
    assert run.code == 0, str(run)
    return out / "good.etok"


def encode_args(model_dir: Path, *extra) -> list:
    return ["--model", model_dir, "--no-progress", *extra]


# ---- bad media -----------------------------------------------------------------------------------------
BAD_MEDIA = [
    case("zero-byte-mp4", "zero_mp4", "zero.mp4"),
    case("zero-byte-png", "zero_png", "zero.png"),
    case("truncated-mp4", "trunc_mp4", "trunc.mp4"),
    case("100-byte-mp4", "stub_mp4", "stub.mp4"),
    case("truncated-png", "trunc_png", "trunc.png"),
    case("garbage-mp4", "garbage_mp4", "garbage.mp4"),
    case("garbage-png", "garbage_png", "garbage.png"),
    case("text-as-jpg", "text_jpg", "text.jpg"),
    case("video-named-png", "video_as_png", "video-named.png"),
    case("4x4-png", "tiny_png", "smaller than"),
    case("txt-suffix", "notes_txt", "notes.txt"),
    case("decompression-bomb-png", "bomb_png", "pixels"),
    case("directory-named-mp4", "dir_mp4", "directory"),
    case("directory", "folder", "directory"),
    case("missing-file", "missing_mp4", "no such file"),
    case("audio-only-mp4", "audio_mp4", "no video stream"),
]


@pytest.mark.parametrize("name, word", BAD_MEDIA)
def test_bad_media_is_refused_in_one_line(corpus, model_dir, tmp_path, name, word):
    if name not in corpus:
        pytest.skip("this FFmpeg build cannot write the file")
    before = snapshot(tmp_path)
    run = cli("encode", corpus[name], "-o", tmp_path / "out", *encode_args(model_dir, "--tokens", "4"))
    assert_refused(run, word)
    assert_nothing_left(tmp_path, before)


def test_a_corrupt_stretch_of_video_is_skipped_and_the_rest_encoded(corpus, model_dir, tmp_path, caplog):
    clean = cli("encode", corpus["street_mp4"], "-o", tmp_path / "clean", *encode_args(model_dir, "--tokens", "4"),
                "--json")
    assert clean.code == 0, str(clean)
    caplog.clear()
    run = cli("encode", corpus["mid_garbage_mp4"], "-o", tmp_path / "out", *encode_args(model_dir, "--tokens", "4"),
              "--json")
    assert run.crash is None and run.code == 0, str(run)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] + run.err.strip().splitlines()
    assert any("mid-garbage.mp4" in w and "skip" in w for w in warnings), warnings
    blocks, clean_blocks = json.loads(run.out)["blocks"], json.loads(clean.out)["blocks"]
    assert blocks >= 0.85 * clean_blocks, f"{blocks} of {clean_blocks} blocks encoded"
    assert cli("decode", tmp_path / "out" / "mid-garbage.etok", "-o", tmp_path / "mid.mp4",
               *encode_args(model_dir)).code == 0


def test_a_video_whose_demuxer_gives_up_after_damage_says_so(corpus, model_dir, tmp_path, caplog):
    """AVI's demuxer stops at damage without an error: the frames it lost are named, not silently dropped."""
    import av

    avi = tmp_path / "street.avi"
    frames = VideoReader(corpus["street_mp4"]).read_all()
    with av.open(str(avi), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.numpy(), format="rgb24")))
        container.mux(stream.encode())
    data = bytearray(avi.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = random.Random(3).randbytes(4096)
    avi.write_bytes(bytes(data))
    caplog.clear()
    run = cli("encode", avi, "-o", tmp_path / "out", *encode_args(model_dir, "--tokens", "4"))
    assert run.crash is None and run.code == 0, str(run)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] + run.err.strip().splitlines()
    assert any("street.avi" in w and "the rest is damaged or missing" in w for w in warnings), warnings


@pytest.mark.parametrize("args, word", [
    case("bomb-in-a-real-process", ["bomb_png"], "pixels"),
    case("fps-negative-in-a-real-process", ["good_mp4", "--fps", "-5"], "fps"),
])
def test_the_installed_entry_point_gives_one_line_and_never_hangs(corpus, model_dir, tmp_path, args, word):
    """``python -m elastictok.cli`` with its own logging set-up and no pytest capture."""
    args = [str(corpus[a]) if a in corpus else a for a in args]
    try:
        command = [sys.executable, "-m", "elastictok.cli", "encode", *args, "-o", str(tmp_path / "out"),
                   "--model", str(model_dir), "--no-progress"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: {args}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and word in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


# ---- bad arguments ---------------------------------------------------------------------------------------
BAD_ARGUMENTS = [
    case("fps-negative", ["--fps", "-5"], "fps"),
    case("fps-zero", ["--fps", "0"], "fps"),
    case("fps-nan", ["--fps", "nan"], "fps"),
    case("fps-inf", ["--fps", "inf"], "fps"),
    case("fps-12000", ["--fps", "12000"], "fps"),
    case("fps-1e-300", ["--fps", "1e-300"], "fps"),
    case("fps-not-a-number", ["--fps", "fast"], "fps"),
    case("device-cuda", ["--device", "cuda"], "cuda"),
    case("device-unknown", ["--device", "banana"], "banana"),
    case("mse-nan", ["--threshold", "mse:nan"], "mse"),
    case("mse-negative", ["--threshold", "mse:-1"], "mse"),
    case("mse-inf", ["--threshold", "mse:inf"], "mse"),
    case("ssim-2", ["--threshold", "ssim:2"], "ssim"),
    case("psnr-negative", ["--threshold", "psnr:-5"], "psnr"),
    case("psnr-inf", ["--threshold", "psnr:inf"], "psnr"),
    case("threshold-tokens-999999", ["--threshold", "tokens:999999"], "999999"),
    case("tokens-999999", ["--tokens", "999999"], "999999"),
    case("tokens-below-min", ["--tokens", "1"], "tokens"),
    case("tokens-zero", ["--tokens", "0"], "positive"),
    case("budget-zero", ["--budget", "0"], "positive"),
    case("window-zero", ["--window", "0"], "window"),
    case("window-2-to-the-70", ["--window", str(2**70)], "window"),
    case("length-head-without-regression", ["--length-head", "head.safetensors"], "--search regression"),
    case("dtype-fp8", ["--dtype", "fp8"], "dtype"),
    case("fit-stretch", ["--fit", "stretch"], "fit"),
    case("search-unknown", ["--search", "magic"], "search"),
    case("regression-without-head", ["--search", "regression"], "length-head"),
]


@pytest.mark.parametrize("extra, word", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_in_one_line(corpus, model_dir, tmp_path, extra, word):
    before = snapshot(tmp_path)
    run = cli("encode", corpus["good_mp4"], "-o", tmp_path / "out", *encode_args(model_dir, *extra), timeout=10)
    assert_refused(run, word)
    assert_nothing_left(tmp_path, before)


def test_missing_output_argument_is_one_line(corpus, model_dir):
    assert_refused(cli("encode", corpus["good_mp4"], *encode_args(model_dir)), "-o")


def test_eval_threshold_is_checked(corpus, model_dir, tmp_path):
    before = snapshot(tmp_path)
    run = cli("eval", corpus["good_png"], "--baseline", model_dir, "--thresholds", "mse:-1", "--out",
              tmp_path / "eval", *encode_args(model_dir))
    assert_refused(run, "mse")
    assert_nothing_left(tmp_path, before)


# ---- bad models ---------------------------------------------------------------------------------------------
def bad_model(root: Path, name: str, model_dir: Path, change) -> Path:
    """A copy of ``model_dir`` whose config.json or weights ``change`` edits."""
    from safetensors.torch import load_file, save_file

    path = root / name
    path.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    state = load_file(str(model_dir / "model.safetensors"))
    result = change(config, state)
    if result == "no-weights":
        (path / "config.json").write_text(json.dumps(config))
        return path
    (path / "config.json").write_text(result if isinstance(result, str) else json.dumps(config))
    save_file(state, str(path / "model.safetensors"))
    return path


def _set(**fields):
    return lambda config, state: config.update(fields)


def _fill(value):
    return lambda config, state: [t.fill_(value) for t in state.values() if t.is_floating_point()] and None


def _one_nan(config, state):
    next(t for t in state.values() if t.is_floating_point()).view(-1)[0] = math.nan


BAD_MODELS = [
    case("num-heads-0", _set(num_heads=0), "num_heads"),
    case("num-heads-negative", _set(num_heads=-4), "num_heads"),
    case("patch-time-0", _set(patch_size=[0, 8, 8]), "patch"),
    case("patch-height-0", _set(patch_size=[1, 0, 8]), "patch"),
    case("frames-per-block-0", _set(frames_per_block=0), "frames_per_block"),
    case("resolution-0", _set(resolution=[0, 32]), "resolution"),
    case("width-0", _set(width=0), "width"),
    case("depth-negative", _set(encoder_depth=-1), "depth"),
    case("mlp-width-0", _set(mlp_width=0), "mlp_width"),
    case("fsq-levels-empty", _set(fsq_levels=[]), "fsq_levels"),
    case("width-is-text", _set(width="wide"), "width"),
    case("config-is-a-list", lambda config, state: "[1, 2]", "config"),
    case("config-is-garbage", lambda config, state: "{not json", "config"),
    case("no-weights-file", lambda config, state: "no-weights", "model.safetensors"),
    case("all-nan-weights", _fill(math.nan), "finite"),
    case("all-inf-weights", _fill(math.inf), "finite"),
    case("one-nan-weight", _one_nan, "finite"),
    case("integer-weights", lambda config, state: state.update({k: v.int() for k, v in state.items()}), "kind"),
    case("complex-weights", lambda config, state: state.update({k: v.to(torch.complex64) for k, v in state.items()}),
         "kind"),
    case("norm-eps-is-text", _set(norm_eps="x"), "norm_eps"),
    case("rope-theta-nan", lambda config, state: json.dumps({**config, "rope_theta": math.nan}), "rope_theta"),
    case("rope-theta-0", _set(rope_theta=0), "rope_theta"),
    case("norm-eps-negative", _set(norm_eps=-1), "norm_eps"),
    case("init-std-is-text", _set(init_std="x"), "init_std"),
    case("window-fraction", _set(window=2.5), "window"),
    case("name-is-a-number", _set(name=5), "name"),
    case("resolution-huge", _set(resolution=[1048576, 1048576]), "resolution"),
    case("fsq-level-fraction", _set(fsq_levels=[8.7, 8, 8]), "fsq_levels"),
    case("min-tokens-fraction", _set(min_tokens=2.5), "min_tokens"),
    case("flag-is-text", _set(encoder_mask_conditioning="no"), "encoder_mask_conditioning"),
]


@pytest.mark.parametrize("change, word", BAD_MODELS)
def test_bad_models_are_refused_in_one_line(corpus, model_dir, tmp_path, change, word, request):
    bad = bad_model(tmp_path, request.node.callspec.id, model_dir, change)
    before = snapshot(tmp_path)
    run = cli("encode", corpus["good_png"], "-o", tmp_path / "out", "--model", bad, "--tokens", "4", "--no-progress")
    assert_refused(run, word)
    assert_nothing_left(tmp_path, before)


# ---- bad outputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, output, word", [
    case("encode-o-existing-file", "encode", "a-file", "a-file"),
    case("encode-o-under-a-file", "encode", "a-file/sub", "a-file"),
    case("decode-o-directory", "decode", "a-dir", "a-dir"),
    case("decode-o-under-a-file", "decode", "a-file/x.png", "a-file"),
    case("decode-o-text-suffix", "decode", "x.txt", ".png"),
    case("reconstruct-o-directory", "reconstruct", "a-dir.png", "a-dir.png"),
])
def test_impossible_outputs_are_refused_and_leave_nothing(corpus, model_dir, good_etok, tmp_path, command, output,
                                                          word):
    (tmp_path / "a-file").write_text("precious")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-dir.png").mkdir()
    before = snapshot(tmp_path)
    source = good_etok if command == "decode" else corpus["good_png"]
    extra = ["--tokens", "4"] if command != "decode" else []
    run = cli(command, source, "-o", tmp_path / output, *encode_args(model_dir, *extra))
    assert_refused(run, word)
    assert_nothing_left(tmp_path, before)
    assert (tmp_path / "a-file").read_text() == "precious"
    no_temporaries(tmp_path, good_etok.parent)


# ---- many inputs ---------------------------------------------------------------------------------------------
def test_a_run_over_many_inputs_writes_the_good_ones_and_names_the_bad(corpus, model_dir, tmp_path):
    out = tmp_path / "out"
    run = cli("encode", corpus["good_mp4"], corpus["zero_mp4"], corpus["good_png"], corpus["garbage_png"], "-o", out,
              *encode_args(model_dir, "--tokens", "4"))
    line = assert_refused(run, "zero.mp4", "garbage.png", "2 of 4")
    assert "good" not in line
    assert sorted(p.name for p in out.iterdir()) == ["good.etok", "good.png.etok"] or \
        sorted(p.name for p in out.iterdir()) == ["good.etok", "good.mp4.etok"] or \
        len(list(out.glob("*.etok"))) == 2
    for etok in out.glob("*.etok"):
        assert read_etok(etok).n_blocks >= 1
    no_temporaries(tmp_path)


def test_a_run_where_every_input_fails_leaves_no_folder(corpus, model_dir, tmp_path):
    before = snapshot(tmp_path)
    run = cli("encode", corpus["zero_mp4"], corpus["garbage_png"], "-o", tmp_path / "out" / "deeper",
              *encode_args(model_dir, "--tokens", "4"))
    assert_refused(run, "zero.mp4", "garbage.png")
    assert_nothing_left(tmp_path, before)


def test_inputs_with_the_same_stem_get_distinct_outputs(corpus, model_dir, tmp_path):
    root = corpus["root"]
    inputs = [root / "same" / "a.mp4", root / "same" / "a.png", root / "x" / "b.png", root / "y" / "b.png"]
    run = cli("encode", *inputs, "-o", tmp_path / "out", *encode_args(model_dir, "--tokens", "4"), "--json")
    assert run.crash is None and run.code == 0, str(run)
    outputs = [Path(json.loads(line)["output"]) for line in run.out.splitlines()]
    assert len(set(outputs)) == 4 and all(p.exists() for p in outputs), outputs
    kinds = [read_etok(p).info.is_image for p in outputs]
    assert kinds == [False, True, True, True]
    assert [read_etok(p).info.source for p in outputs] == [str(p) for p in inputs]


def test_good_inputs_still_work(corpus, model_dir, good_video_etok, tmp_path):
    assert cli("decode", good_video_etok, "-o", tmp_path / "v.mp4", *encode_args(model_dir)).code == 0
    assert len(VideoReader(tmp_path / "v.mp4").read_all()) == 16
    no_temporaries(tmp_path)


# ---- bad token files ------------------------------------------------------------------------------------------
def decode(model_dir: Path, etok: Path, output: Path, timeout: float = 30) -> Run:
    return cli("decode", etok, "-o", output, "--model", model_dir, "--no-progress", timeout=timeout)


@pytest.mark.parametrize("what, word", [
    case("zero-byte-etok", "zero", "zero.etok"),
    case("garbage-etok", "garbage", "garbage.etok"),
    case("directory-as-etok", "directory", "directory"),
    case("missing-etok", "missing", "no such file"),
    case("video-as-etok", "video", "not a token file"),
])
def test_unreadable_token_files_are_refused(corpus, model_dir, tmp_path, what, word):
    paths = {"zero": tmp_path / "zero.etok", "garbage": tmp_path / "garbage.etok", "directory": tmp_path / "d.etok",
             "missing": tmp_path / "missing.etok", "video": corpus["good_mp4"]}
    paths["zero"].write_bytes(b"")
    paths["garbage"].write_bytes(random.Random(1).randbytes(1000))
    paths["directory"].mkdir()
    before = snapshot(tmp_path)
    assert_refused(decode(model_dir, paths[what], tmp_path / "x.png"), word)
    assert_nothing_left(tmp_path, before)


def test_every_truncation_is_refused(model_dir, good_etok, tmp_path):
    data = good_etok.read_bytes()
    bad = []
    for length in range(len(data)):
        path = tmp_path / "cut.etok"
        path.write_bytes(data[:length])
        run = decode(model_dir, path, tmp_path / "x.png")
        try:
            assert_refused(run)
        except AssertionError as exc:
            bad.append(f"{length}: {str(exc).splitlines()[0][:200]}")
        assert not (tmp_path / "x.png").exists()
    assert not bad, f"{len(bad)} of {len(data)} truncations: {bad[:5]}"


def _meaning(data: bytes):
    """What a token file says: its parsed header and its tensor bytes (None if it does not parse)."""
    try:
        length = int.from_bytes(data[:8], "little")
        return json.loads(data[8:8 + length]), data[8 + length:]
    except ValueError:
        return None


def test_every_single_byte_flip_is_refused_or_harmless(model_dir, good_etok, tmp_path):
    """A flipped bit anywhere is refused, unless it leaves the file's meaning unchanged (JSON padding)."""
    data = good_etok.read_bytes()
    original = _meaning(data)
    accepted = []
    for i, mask in [(i, mask) for mask in (0x01, 0x80) for i in range(len(data))]:
        flipped = bytearray(data)
        flipped[i] ^= mask
        path = tmp_path / "flip.etok"
        path.write_bytes(bytes(flipped))
        run = decode(model_dir, path, tmp_path / "x.png")
        assert run.crash is None, str(run)
        if run.code == 0:
            (tmp_path / "x.png").unlink()
            if _meaning(bytes(flipped)) != original:
                accepted.append((i, mask))
        else:
            assert_refused(run)
    assert not accepted, (f"{len(accepted)} of {2 * len(data)} single-bit flips decode without complaint: "
                          f"{accepted[:20]}")


def hostile(good: Path, model_dir: Path, tmp_path: Path, codebook: int | None = None, **changes) -> Path:
    """A well-formed token file (valid checksum, if the format has one) whose fields ``changes`` edits."""
    encoded = read_etok(good)
    model = ElasticTok.from_pretrained(model_dir)
    info_fields = {k: changes.pop(k) for k in ("fps", "size", "frames", "is_image") if k in changes}
    if info_fields:
        encoded.info = replace(encoded.info, **info_fields)
    if "counts" in changes:
        counts = changes.pop("counts")
        n = sum(counts)
        tokens = encoded.tokens
        encoded.tokens = tokens.repeat(n // len(tokens) + 1)[:n]
        encoded.counts = torch.tensor(counts)
        encoded.scores = torch.zeros(len(counts))
        encoded.met = None  # per block like the scores; not under test here
    for key, value in changes.items():
        setattr(encoded, key, value)
    path = tmp_path / "hostile.etok"  # written past the writer's own checks (the reader's are under test)
    header, tensors = _header_and_tensors(encoded, model.quantizer.codebook_size if codebook is None else codebook)
    path.write_bytes(save(tensors, metadata=header))
    return path


HOSTILE = [
    case("header-max-tokens-64-for-a-32-token-model", dict(max_tokens=64, counts=[40]), "max_tokens"),
    case("header-max-tokens-16", dict(max_tokens=16, counts=[4]), "max_tokens"),
    case("header-codebook-larger-than-model", dict(codebook=10**6, tokens=torch.tensor([100000, 5, 6, 7])), "codebook"),
    case("header-codebook-smaller-than-model", dict(codebook=100, tokens=torch.tensor([1, 2, 3, 4])), "codebook"),
    case("header-other-model", dict(config_hash="0123456789abcdef"), "model"),
    case("header-other-weights", dict(weights_hash="0123456789abcdef"), "weights"),
    case("header-vae-tokens-for-fsq-model", dict(codebook=0, tokens=torch.zeros(4, 6)), "bottleneck"),
    case("header-count-below-min-tokens", dict(counts=[1]), "tokens"),
    case("header-image-with-three-blocks", dict(counts=[4, 4, 4]), "image"),
    case("header-frames-beyond-the-blocks", dict(is_image=False, fps=10.0, frames=1000, counts=[4, 4]), "frames"),
    case("header-fps-12000", dict(is_image=False, fps=12000.0, frames=2), "fps"),
    case("header-fps-nan", dict(is_image=False, fps=math.nan, frames=2), "fps"),
    case("header-fps-negative", dict(is_image=False, fps=-5.0, frames=2), "fps"),
    case("header-fps-zero", dict(is_image=False, fps=0.0, frames=2), "fps"),
    case("header-fps-1e-300", dict(is_image=False, fps=1e-300, frames=2), "fps"),  # no video can store it
    case("header-size-zero", dict(size=(0, 32)), "size"),
    case("header-size-huge", dict(size=(2**40, 32)), "size"),
]


@pytest.mark.parametrize("changes, word", HOSTILE)
def test_hostile_headers_are_checked_against_the_model(model_dir, good_etok, tmp_path, changes, word):
    etok = hostile(good_etok, model_dir, tmp_path, **dict(changes))
    before = snapshot(tmp_path)
    output = tmp_path / "out" / ("x.png" if changes.get("is_image", True) else "x.mp4")
    assert_refused(decode(model_dir, etok, output), word)
    assert_nothing_left(tmp_path, before)


def test_a_file_written_at_any_accepted_fps_decodes(corpus, model_dir, tmp_path):
    """Whatever --fps encode accepts, decode accepts too (a 12000 fps file used to be refused by decode)."""
    for fps in ("0.001", "0.5", "240", "1000", "12000"):
        run = cli("encode", corpus["good_mp4"], "-o", tmp_path / fps, *encode_args(model_dir, "--tokens", "4",
                                                                                   "--fps", fps), timeout=15)
        if run.code == 2:
            assert_refused(run, "fps")
            continue
        assert run.code == 0, str(run)
        assert decode(model_dir, tmp_path / fps / "good.etok", tmp_path / f"{fps}.mp4").code == 0


def test_atomic_writer_cleans_up_when_the_rename_fails(tmp_path):
    from elastictok.utils.fileio import atomic_path

    with pytest.raises(ElasticTokError, match=r"target: cannot write"):  # names the target, not the temp file
        with atomic_path(tmp_path / "target") as tmp:
            tmp.write_bytes(b"x")
            (tmp_path / "target").mkdir()  # a folder appears where the file goes: the rename fails
    no_temporaries(tmp_path)
    with pytest.raises(ElasticTokError, match=r"target: is a directory"):  # one there already: refused at once
        with atomic_path(tmp_path / "target"):
            pass
    no_temporaries(tmp_path)


def test_atomic_writer_passes_other_files_errors_through(tmp_path):
    from elastictok.utils.fileio import atomic_path

    with pytest.raises(FileNotFoundError):  # reading an input failed, not writing the target: say so
        with atomic_path(tmp_path / "target"):
            (tmp_path / "missing-input").read_bytes()
    no_temporaries(tmp_path)


# ---- special files, raw headers, odd names (found by a bad-input hunt) ---------------------------------------
def make_special(path: Path, kind: str) -> None:
    """A pipe nothing writes (a read would wait forever) or a link to /dev/zero (a read would never end)."""
    if kind == "pipe":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("command, name", [
    case("fifo-as-etok", "decode", "pipe.etok"),
    case("fifo-as-image", "encode", "pipe.png"),
    case("fifo-as-video", "encode", "pipe.mp4"),
    case("device-as-etok", "decode", "zeros.etok"),
])
def test_pipes_and_devices_are_refused_not_read(model_dir, tmp_path, command, name):
    path = tmp_path / name
    make_special(path, "pipe" if name.startswith("pipe") else "zeros")
    output = tmp_path / ("x.png" if command == "decode" else "out")
    run = cli(command, path, "-o", output, *encode_args(model_dir, *(["--tokens", "4"] if command == "encode" else [])),
              timeout=20)
    assert_refused(run, name, "pipe or device")
    assert not output.exists()


@pytest.mark.parametrize("name, kind", [
    case("model-config-pipe", "model/config.json", "pipe"),
    case("model-config-zeros", "model/config.json", "zeros"),
    case("model-weights-pipe", "model/model.safetensors", "pipe"),
    case("training-config-pipe", "run.yaml", "pipe"),
    case("length-head-pipe", "head.safetensors", "pipe"),
    case("official-checkpoint-pipe", "params.streaming", "pipe"),
    case("official-config-zeros", "official.json", "zeros"),
])
def test_pipes_and_devices_behind_models_and_configs_are_refused_not_read(model_dir, tmp_path, name, kind):
    path = tmp_path / name
    if path.parent.name == "model":  # a copy of the model with this one file replaced
        shutil.copytree(model_dir, path.parent)
        path.unlink()
    make_special(path, kind)
    image, output = tmp_path / "small.png", tmp_path / "out"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(image)
    encode = ["encode", image, "-o", output, "--tokens", "4", "--no-progress"]
    args = {"model": [*encode, "--model", path.parent],
            "run.yaml": ["train", "--config", path],
            "head.safetensors": [*encode[:4], "--search", "regression", "--length-head", path, "--model", model_dir],
            "params.streaming": ["convert-official", path, "--preset", "official-fsq-200m", "-o", output],
            "official.json": ["convert-official", image, "--official-config", path, "-o", output],
            }[path.parent.name if path.parent.name == "model" else name]
    word = "empty pipe" if name == "run.yaml" else "pipe or device"  # a config may come from <(sed ...)
    assert_refused(cli(*args, timeout=20), path.name, word)
    assert not output.exists()


@pytest.mark.parametrize("command", [["data", "shard"], ["tokenize-corpus"]])
def test_a_pipe_among_corpus_inputs_is_named_as_one(model_dir, tmp_path, command):
    os.mkfifo(tmp_path / "pipe.mp4")
    model = [] if command[0] == "data" else encode_args(model_dir, "--tokens", "4")
    assert_refused(cli(*command, tmp_path / "pipe.mp4", tmp_path / "out", *model, timeout=20), "pipe.mp4",
                   "pipe or device")
    assert not (tmp_path / "out").exists()


def raw_header(good: Path, tmp_path: Path, **fields: str) -> Path:
    """``good`` with header fields replaced by raw text and a checksum that matches them."""
    from safetensors.torch import load, save

    from elastictok.tokenization.tokenfile import _checksum

    data = good.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    tensors = load(data)
    header.update(fields)
    header["checksum"] = _checksum(header, tensors)
    path = tmp_path / "raw.etok"
    path.write_bytes(save(tensors, metadata=header))
    return path


@pytest.mark.parametrize("fields, word", [
    case("header-counts-nested-100000-deep", {"counts": "[" * 100000}, "malformed"),
    case("header-max-tokens-2-to-the-70", {"max_tokens": str(2**70)}, "out of range"),
    case("header-codebook-2-to-the-70", {"codebook_size": str(2**70)}, "out of range"),
    case("header-version-1-nested-counts", {"version": "1", "counts": "[" * 100000}, "malformed"),
])
def test_raw_hostile_headers_are_refused(model_dir, good_etok, tmp_path, fields, word):
    etok = raw_header(good_etok, tmp_path, **fields)
    before = snapshot(tmp_path)
    assert_refused(decode(model_dir, etok, tmp_path / "out" / "x.png"), word)
    assert_nothing_left(tmp_path, before)


def test_a_name_that_is_not_utf8_still_encodes(corpus, model_dir, tmp_path):
    odd = tmp_path / os.fsdecode(b"bad\xff.png")  # a byte that is not UTF-8, as some file systems hold
    odd.write_bytes(corpus["good_png"].read_bytes())
    run = cli("encode", corpus["good_png"], odd, "-o", tmp_path / "out", *encode_args(model_dir, "--tokens", "4"))
    assert run.crash is None and run.code == 0, str(run)
    assert len(list((tmp_path / "out").glob("*.etok"))) == 2


EVAL = ["eval", "{png}", "--out", "{tmp}/o", "--baseline", "{model}", "--fractions"]


@pytest.mark.parametrize("args, word", [
    case("eval-fractions-nan", [*EVAL, "nan"], "fractions"),
    case("eval-fractions-inf", [*EVAL, "inf"], "fractions"),
    case("eval-fractions-zero", [*EVAL, "0"], "fractions"),
    case("eval-fractions-two", [*EVAL, "2"], "fractions"),
    case("corpus-shard-size-zero", ["tokenize-corpus", "{png}", "{tmp}/o", "--shard-size", "0"], "shard-size"),
    case("corpus-shard-size-negative", ["tokenize-corpus", "{png}", "{tmp}/o", "--shard-size", "-3"], "shard-size"),
    case("data-shard-size-zero", ["data", "shard", "{png}", "{tmp}/o", "--shard-size", "0"], "shard-size"),
    case("length-head-steps-zero", ["train-length-head", "{png}", "-o", "{tmp}/h.safetensors", "--steps", "0"],
         "steps"),
    case("decode-o-is-the-input", ["decode", "{tmp}/x.png", "-o", "{tmp}/x.png"], "is an input"),
    case("reconstruct-o-is-the-input", ["reconstruct", "{tmp}/x.png", "-o", "{tmp}/x.png"], "is an input"),
    case("reconstruct-plot-path-is-a-folder", ["reconstruct", "{png}", "-o", "{tmp}/r.png"], "r_tokens.png"),
    case("length-head-o-is-the-model", ["train-length-head", "{png}", "-o", "{model}/model.safetensors"],
         "is an input"),
    case("length-head-o-is-an-input", ["train-length-head", "{tmp}/x.safetensors", "-o", "{tmp}/x.safetensors"],
         "is an input"),
    case("length-head-o-not-safetensors", ["train-length-head", "{png}", "-o", "{tmp}/x.png"], ".safetensors"),
    case("encode-o-empty", ["encode", "{png}", "-o", ""], "empty"),
    case("decode-o-empty", ["decode", "{tmp}/x.png", "-o", " "], "empty"),
    case("eval-out-empty", [*EVAL[:3], "", *EVAL[4:6]], "empty"),
    case("corpus-destination-empty", ["tokenize-corpus", "{png}", ""], "empty"),
])
def test_bad_arguments_of_every_command_are_refused(corpus, model_dir, tmp_path, args, word):
    (tmp_path / "x.png").write_bytes(corpus["good_png"].read_bytes())
    (tmp_path / "x.safetensors").write_bytes(corpus["good_png"].read_bytes())
    weights = (model_dir / "model.safetensors").read_bytes()
    (tmp_path / "r_tokens.png").mkdir()
    before = snapshot(tmp_path)
    argv = [a.format(png=corpus["good_png"], tmp=tmp_path, model=model_dir) for a in args]
    model = [] if argv[0] == "data" else ["--model", model_dir, "--no-progress"]
    assert_refused(cli(*argv, *model), word)
    assert_nothing_left(tmp_path, before)
    assert (tmp_path / "x.png").read_bytes() == corpus["good_png"].read_bytes()
    assert (tmp_path / "x.safetensors").read_bytes() == corpus["good_png"].read_bytes()
    assert (model_dir / "model.safetensors").read_bytes() == weights


def test_an_input_named_with_a_newline_is_refused_in_one_line(model_dir, tmp_path):
    bad = tmp_path / "two\nlines.png"
    bad.write_bytes(b"not an image")
    assert_refused(cli("encode", bad, "-o", tmp_path / "out", *encode_args(model_dir, "--tokens", "4")),
                   "two\\nlines.png")


@pytest.mark.parametrize("stem", ["x" * 240, "\U0001f600" * 61])  # + ".etok": 245 and 249 bytes, under 255
def test_an_output_named_as_long_as_the_file_system_allows_is_written(corpus, model_dir, tmp_path, stem):
    image = tmp_path / f"{stem}.png"
    image.write_bytes(corpus["good_png"].read_bytes())
    run = cli("encode", image, "-o", tmp_path / "out", *encode_args(model_dir, "--tokens", "4"))
    assert run.crash is None and run.code == 0, str(run)
    assert (tmp_path / "out" / f"{stem}.etok").is_file()
    no_temporaries(tmp_path)


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary(tmp_path):
    from elastictok.cli.main import _terminate_as_interrupt
    from elastictok.utils.fileio import atomic_path

    with pytest.raises(KeyboardInterrupt), _terminate_as_interrupt(), atomic_path(tmp_path / "out.mp4") as tmp:
        tmp.write_bytes(b"half a video")
        os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the CLI's only while it runs


def test_ctrl_c_while_the_arguments_are_read_is_one_line(monkeypatch, capsys):
    cli_main = importlib.import_module("elastictok.cli.main")
    build_parser = cli_main.build_parser

    def ctrl_c_then_build():
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, landing before any command starts
        return build_parser()

    monkeypatch.setattr(cli_main, "build_parser", ctrl_c_then_build)
    assert cli_main.main(["encode", "clip.mp4", "-o", "out"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_library_warnings_are_one_line_each(tmp_path):
    text_tiff = tmp_path / "text.tif"  # PIL warns "Corrupt EXIF data" (two lines with its source) and fails
    text_tiff.write_bytes(b"II*\0hello\n")
    run = subprocess.run([sys.executable, "-m", "elastictok.cli", "encode", str(text_tiff), "-o", str(tmp_path / "o"),
                          "--tokens", "4", "--no-progress"], capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and lines[-1].startswith("error: "), run.stderr
    assert all(line.startswith(("WARNING: ", "error: ")) for line in lines), run.stderr


def test_an_output_that_cannot_be_written_fails_that_input_only(corpus, model_dir, tmp_path):
    out = tmp_path / "out"
    (out / "good.etok").mkdir(parents=True)  # where the image's tokens would go
    run = cli("encode", corpus["good_png"], corpus["root"] / "x" / "b.png", "-o", out,
              *encode_args(model_dir, "--tokens", "4"))
    line = assert_refused(run, "1 of 2", "good.etok", "is a directory")
    assert ".tmp" not in line
    assert [p.name for p in out.glob("*.etok") if p.is_file()] == ["b.etok"]
    no_temporaries(tmp_path)


def test_an_official_config_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "params").write_bytes(b"\0" * 16)
    run = cli("convert-official", tmp_path / "params", "--official-config", tmp_path / "list.json",
              "-o", tmp_path / "out", "--no-progress")
    assert_refused(run, "list.json")
    assert not (tmp_path / "out").exists()


# ---- training configs ------------------------------------------------------------------------------------------
BAD_TRAIN_CONFIGS = [
    case("train-batch-size-huge", "batch_size: 100000000", "batch_size"),
    case("train-n-blocks-huge", "n_blocks: 100000000", "n_blocks"),
    case("train-out-dir-empty", "out_dir: ''", "out_dir"),
    case("train-seed-huge", "seed: 99999999999999999999999", "seed"),
    case("train-betas-number", "betas: 5", "betas"),
    case("train-betas-three", "betas: [0.9, 0.9, 0.9]", "betas"),
    case("train-key-not-text", "1: 2", "unknown"),
    case("train-steps-text", "steps: abc", "steps"),
    case("train-steps-negative", "steps: -1", "steps"),
    case("train-batch-size-zero", "batch_size: 0", "batch_size"),
    case("train-log-every-zero", "log_every: 0", "log_every"),
    case("train-checkpoint-every-zero", "checkpoint_every: 0", "checkpoint_every"),
    case("train-lr-text", "lr: fast", "lr"),
    case("train-overrides-list", "model_overrides: [1, 2]", "model_overrides"),
    case("train-overrides-unknown", "model_overrides: {wdith: 3}", "wdith"),
    case("train-overrides-wrong-type", "model_overrides: {width: abc}", "width"),
    case("train-ema-decay-5", "ema_decay: 5", "ema_decay"),
    case("train-num-workers-negative", "num_workers: -1", "num_workers"),
    case("train-device-banana", "device: banana", "banana"),
    case("train-grad-accum-zero", "grad_accum: 0", "grad_accum"),
    case("train-image-fraction-2", "image_fraction: 2", "image_fraction"),
    case("train-max-minutes-negative", "max_minutes: -1", "max_minutes"),
    case("train-schedule-linear", "schedule: linear", "schedule"),
    case("train-distributed-banana", "distributed: banana", "distributed"),
    case("train-data-a-number", "data: 5", "data"),
    case("train-yaml-syntax", "steps: [1", "YAML"),
    case("train-yaml-python-tag", "steps: !!python/object:os.system {}", "YAML"),
    case("train-not-utf8", b"\xff\xfe\x00steps", "cannot read"),
    case("train-control-character", b"steps: 3\x07", "YAML"),
    case("train-mask-misspelt", "mask: elastc", "elastc"),
    case("train-mask-full-with-one-length", "mask: elastic+full", "mask_lengths"),
]


@pytest.mark.parametrize("line, word", BAD_TRAIN_CONFIGS)
def test_bad_training_configs_are_refused_before_any_work(corpus, tmp_path, line, word):
    config = tmp_path / "bad.yaml"
    base = f"model: micro\ndata: [{corpus['good_png']}]\nout_dir: {tmp_path / 'run'}\nsteps: 1\n"
    config.write_bytes(line if isinstance(line, bytes) else (base + line + "\n").encode())
    assert_refused(cli("train", "--config", config, "--no-progress"), word)
    assert not (tmp_path / "run").exists()


def _nan_weights(blob):
    next(iter(blob["model"].values())).fill_(math.nan)
    return blob


def stopped_run(corpus, tmp_path: Path) -> tuple[Path, Path]:
    """A training config and the checkpoint of its run, stopped after one of two steps: (config, last.pt)."""
    config = tmp_path / "ok.yaml"
    config.write_text(f"model: micro\ndata: [{corpus['good_png']}]\nout_dir: {tmp_path / 'run'}\nsteps: 2\n"
                      "stop_at: 1\ncheckpoint_every: 1\n")
    assert cli("train", "--config", config, "--no-progress").code == 0
    return config, tmp_path / "run" / "checkpoints" / "last.pt"


@pytest.mark.parametrize("damage", [
    case("checkpoint-empty-dict", lambda blob: {}),
    case("checkpoint-a-list", lambda blob: [1, 2]),
    case("checkpoint-no-model", lambda blob: {k: v for k, v in blob.items() if k != "model"}),
    case("checkpoint-step-text", lambda blob: {**blob, "step": "abc"}),
    case("checkpoint-step-negative", lambda blob: {**blob, "step": -5}),
    case("checkpoint-scheduler-empty", lambda blob: {**blob, "scheduler": {}}),
    case("checkpoint-no-param-groups", lambda blob: {**blob, "optimizer": {"state": {}, "param_groups": []}}),
    case("checkpoint-wrong-shapes", lambda blob: {**blob, "model": {k: v[..., :1] for k, v in blob["model"].items()}}),
    case("checkpoint-nan-weights", _nan_weights),
])
def test_a_damaged_checkpoint_is_refused_on_resume(corpus, tmp_path, damage):
    config, last = stopped_run(corpus, tmp_path)
    torch.save(damage(torch.load(last, weights_only=True)), last)
    assert_refused(cli("train", "--config", config, "--resume", "--no-progress"), "last.pt")


@pytest.mark.parametrize("kind", ["fifo", "pickle-of-a-function", "text", "empty"])
def test_a_checkpoint_file_that_is_not_one_is_refused_on_resume(corpus, tmp_path, kind):
    config, last = stopped_run(corpus, tmp_path)
    last.unlink()
    if kind == "fifo":
        os.mkfifo(last)  # would block torch.load forever
    else:
        last.write_bytes({"pickle-of-a-function": pickle.dumps(os.getcwd), "text": b"hello\n", "empty": b""}[kind])
    assert_refused(cli("train", "--config", config, "--resume", "--no-progress"), "last.pt")


@pytest.mark.parametrize("flag, value", [("--steps", "-1"), ("--num-workers", "-1"), ("--max-minutes", "nan")])
def test_bad_training_flags_are_refused(corpus, tmp_path, flag, value):
    config = tmp_path / "ok.yaml"
    config.write_text(f"model: micro\ndata: [{corpus['good_png']}]\nout_dir: {tmp_path / 'run'}\nsteps: 1\n")
    assert_refused(cli("train", "--config", config, flag, value, "--no-progress"), flag[2:].replace("-", "_"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("summary", [b"garbage", b"[]", b"{}", b'{"inputs": "x"}'])
def test_a_damaged_shard_summary_is_refused_not_trusted(corpus, model_dir, tmp_path, summary):
    shards = tmp_path / "shards"
    args = [corpus["good_png"], shards, *encode_args(model_dir, "--tokens", "4")]
    assert cli("tokenize-corpus", *args).code == 0
    (shards / "tokens-000000.json").write_bytes(summary)
    assert_refused(cli("tokenize-corpus", *args), "tokens-000000.json", "damaged")


@pytest.mark.parametrize("change", [
    case("other-inputs", lambda args, corpus, model_dir: [corpus["root"] / "x" / "b.png", *args[1:]]),
    case("other-target", lambda args, corpus, model_dir: [*args[:-1], "5"]),
])
def test_a_rerun_into_another_runs_shards_is_refused(corpus, model_dir, tmp_path, change):
    args = [corpus["good_png"], tmp_path / "shards", *encode_args(model_dir, "--tokens", "4")]
    assert cli("tokenize-corpus", *args).code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    assert_refused(cli("tokenize-corpus", *change(args, corpus, model_dir)), "other inputs")
    assert {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()} == before
    assert "1 already done" in cli("tokenize-corpus", *args).out  # the same run again: skipped, not refused


def test_a_corpus_run_where_every_input_fails_exits_2(corpus, model_dir, tmp_path):
    run = cli("tokenize-corpus", corpus["garbage_png"], corpus["zero_mp4"], tmp_path / "shards",
              *encode_args(model_dir, "--tokens", "4"))
    assert run.crash is None and run.code == 2, str(run)
    assert "all 2 inputs failed" in run.err.strip().splitlines()[-1]
    assert not (tmp_path / "shards").exists()  # no empty shard marked done: a rerun tries the inputs again


def test_a_shard_run_where_every_input_fails_exits_2(corpus, tmp_path):
    run = cli("data", "shard", corpus["garbage_png"], corpus["zero_mp4"], tmp_path / "shards", "--no-progress")
    assert run.crash is None and run.code == 2, str(run)
    assert "all 2 inputs were unreadable" in run.err.strip().splitlines()[-1]
    assert not (tmp_path / "shards").exists()
