"""The bundled default model and sample clip: they load offline and work on real video."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elastictok import ElasticTok, TokenCount
from elastictok.media.io import VideoReader
from elastictok.media.transforms import fit_to_resolution, to_model
from elastictok.metrics.quality import mse_per_block, psnr_from_mse
from elastictok.models.pretrained import DEFAULT_MODEL, bundled_models, resolve_model_path, sample_video

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in bundled_models(),
                                reason=f"the default model's weights are not in src/elastictok/weights/{DEFAULT_MODEL}")


@pytest.fixture(scope="module")
def default_model() -> ElasticTok:
    return ElasticTok.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def street(default_model) -> torch.Tensor:
    """(1, T, 3, H, W): the bundled clip at the model's resolution."""
    frames = VideoReader(sample_video()).read_all()
    return to_model(fit_to_resolution(frames, default_model.config.resolution))[None]


def test_sample_clip_is_a_real_video():
    reader = VideoReader(sample_video())
    assert reader.fps == 10 and (reader.info.height, reader.info.width) == (128, 128)
    assert reader.read_all().shape == (80, 128, 128, 3)


@pytest.mark.parametrize("name", ["default", "default-narrow"])
def test_bundled_models_beat_a_flat_colour_and_improve_with_tokens(name, street):
    if name not in bundled_models():
        pytest.skip(f"no bundled model {name!r} in src/elastictok/weights")
    model = ElasticTok.from_pretrained(name)
    c = model.config
    with torch.no_grad():
        psnr = {n: psnr_from_mse(mse_per_block(model(street, n).recon, street, c.frames_per_block)).mean()
                for n in (c.min_tokens, c.tokens_per_block // 4, c.tokens_per_block)}
    flat = street.mean(dim=(1, 3, 4), keepdim=True).expand_as(street)
    flat_psnr = psnr_from_mse(mse_per_block(flat, street, c.frames_per_block)).mean()
    assert psnr[c.tokens_per_block] > flat_psnr + 5
    assert psnr[c.min_tokens] < psnr[c.tokens_per_block // 4] < psnr[c.tokens_per_block]


def test_adaptive_tokens_meet_the_target_when_decoded(default_model, street):
    c = default_model.config
    with torch.no_grad():
        all_tokens = mse_per_block(default_model(street).recon, street, c.frames_per_block)[0]
    threshold = float(all_tokens.max()) * 1.05  # every block can meet it with all its tokens
    encoded = default_model.tokenize(street, f"mse:{threshold}")[0]
    decoded = default_model.detokenize(encoded)[None]
    achieved = mse_per_block(decoded, street, c.frames_per_block)[0]
    assert (achieved <= threshold * (1 + 1e-4)).all()
    assert encoded.counts.sum() < encoded.n_blocks * c.tokens_per_block  # some block needs fewer than all


def test_commands_default_to_the_bundled_model(tmp_path):
    out = tmp_path / "side.mp4"
    result = subprocess.run([sys.executable, "-m", "elastictok.cli", "reconstruct", str(sample_video()), "-o", str(out),
                             "--threshold", "mse:0.05", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.exists() and "20 blocks" in result.stdout


def test_the_default_v4_length_head_matches_its_model_and_tracks_the_search(street):
    """The full-width `default` model's head (fitted on its weights): one pass lands within 8 tokens of the
    search on average, and most blocks meet the target."""
    from elastictok.tokenization.length_head import HEAD_NAME, LengthHead

    model = ElasticTok.from_pretrained("default")
    head = LengthHead.load(resolve_model_path("default") / HEAD_NAME, model)  # trained on these weights
    searched = model.tokenize(street, "mse:0.05")[0]
    one_pass = model.tokenize(street, "mse:0.05", search="regression", length_head=head)[0]
    assert abs(one_pass.counts.float().mean() - searched.counts.float().mean()) < 8
    assert (one_pass.scores <= 0.05).float().mean() >= 0.75
    # from Python as from the CLI, search="regression" alone finds the head beside the loaded weights
    own = model.tokenize(street, "mse:0.05", search="regression")[0]
    assert torch.equal(own.counts, one_pass.counts)


def test_the_default_models_length_head_meets_the_default_target_in_one_pass(default_model, street, tmp_path):
    """The default model's own head, found beside its weights from Python and from the CLI: at the command
    line's default target, one pass meets the target on at least 90% of the clip's blocks (it aims 10%
    below the threshold, spending more tokens than a search rather than missing)."""
    from elastictok.tokenization.length_head import HEAD_NAME, LengthHead
    from elastictok.tokenization.options import DEFAULT_TARGET
    from elastictok.tokenization.targets import parse_target

    head = LengthHead.load(resolve_model_path(DEFAULT_MODEL) / HEAD_NAME, default_model)  # trained on these weights
    one_pass = default_model.tokenize(street, DEFAULT_TARGET, search="regression")[0]
    assert torch.equal(one_pass.counts,
                       default_model.tokenize(street, DEFAULT_TARGET, search="regression", length_head=head)[0].counts)
    assert (one_pass.scores <= parse_target(DEFAULT_TARGET).value).float().mean() >= 0.9
    assert one_pass.counts.float().mean() < default_model.config.tokens_per_block  # not all tokens everywhere
    # the CLI's --search regression finds the default model's own head
    result = subprocess.run([sys.executable, "-m", "elastictok.cli", "encode", str(sample_video()), "-o",
                             str(tmp_path / "out"), "--search", "regression", "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "20 blocks" in result.stdout and (tmp_path / "out" / "street.etok").exists()


BASELINES = Path(__file__).resolve().parents[2] / "baselines"
NARROW_BASELINES = {"default-narrow-fixed-0.25": 64, "default-narrow-fixed-0.5": 128, "default-narrow-full": 256}


def test_default_narrows_baselines_are_its_first_cosine_at_one_length_each(street):
    """default-narrow's fixed-length and full-length baselines: real runs of its first cosine's recipe for the
    same one-thread minutes (their training.json), each better than the others at the length it trained for
    on the bundled clip (held out from training), tokenized and decoded as a user would."""
    models = {name: ElasticTok.from_pretrained(BASELINES / name) for name in NARROW_BASELINES}
    minutes = [json.loads((BASELINES / name / "training.json").read_text())["minutes"] for name in models]
    assert max(minutes) - min(minutes) < 1.0 and min(minutes) > 60
    for name, tokens in NARROW_BASELINES.items():
        scores = {}
        for other, model in models.items():
            decoded = model.detokenize(model.tokenize(street, TokenCount(tokens), progress=False)[0])[None]
            scores[other] = psnr_from_mse(mse_per_block(decoded, street, model.config.frames_per_block)).mean().item()
        assert max(scores, key=scores.get) == name, (tokens, scores)
