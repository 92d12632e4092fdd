"""FlexTok's latent input stage: a causal convolutional video autoencoder under the flow (models/flextok/latent.py).

Causality in time, shapes, learning on a real clip, its files, and FlexTok over it: trained with the stage
frozen, coded block by block as the whole clip, and configs saved before the stage existed unchanged."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from elastictok import ElasticTokError, tokenize
from elastictok.media.io import VideoReader
from elastictok.media.transforms import fit_to_resolution, to_model
from elastictok.models.flextok import FlexTok, FlexTokConfig, LatentStage
from elastictok.models.flextok.latent import SHAPE_NAME
from elastictok.models.pretrained import sample_video
from elastictok.models.registry import from_pretrained
from elastictok.training.config import TrainConfig
from elastictok.training.optimizers import build_optimizer


def perturbed(stage: LatentStage, seed: int = 0) -> LatentStage:
    """``stage`` with every weight moved: the residual pairs' zero-initialised convolutions would otherwise
    leave parts of the network out of the causality tests."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stage.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return stage.eval()


def small_stage(**shape) -> LatentStage:
    torch.manual_seed(0)
    return perturbed(LatentStage(**{"channels": 4, "width": 16, **shape}))


def latent_micro(**overrides) -> FlexTok:
    """The micro preset (32x32, 2-frame blocks) over a small latent stage: 16 patches of (1, 2, 2) per block."""
    torch.manual_seed(0)
    fields = dict(input_stage="latent", stage_channels=4, stage_factors=(2, 4), stage_width=16, patch_size=(1, 2, 2))
    return FlexTok(FlexTokConfig.from_preset("flextok-micro", **{**fields, **overrides}))


def street_clip(frames: int = 4, size: int = 32) -> torch.Tensor:
    """(1, frames, 3, size, size): the first frames of the bundled real clip, in [-1, 1]."""
    video = torch.stack(list(islice(VideoReader(sample_video()), frames)))
    return to_model(fit_to_resolution(video, (size, size)))[None]


@pytest.mark.parametrize("factors", [(2, 4), (4, 2), (1, 8)])
def test_the_encoder_never_sees_a_later_frame(factors):
    """Changing frame f leaves every latent frame whose frames all come before f as it was, and changes the one
    holding f; changing latent frame j leaves the decoded frames before j's as they were."""
    stage = small_stage(factors=factors)
    ft = factors[0]
    video = torch.rand(1, 8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = stage.encode(video)
        for frame in range(1, 8):
            changed = video.clone()
            changed[:, frame] = torch.rand(3, 32, 32) * 2 - 1
            after = stage.encode(changed)
            torch.testing.assert_close(after[:, :frame // ft], before[:, :frame // ft], rtol=0, atol=1e-6)
            assert not torch.allclose(after[:, frame // ft], before[:, frame // ft], atol=1e-4)
        decoded = stage.decode(before)
        for j in range(1, before.shape[1]):
            changed = before.clone()
            changed[:, j] += 1.0
            again = stage.decode(changed)
            torch.testing.assert_close(again[:, :j * ft], decoded[:, :j * ft], rtol=0, atol=1e-6)
            assert not torch.allclose(again[:, j * ft], decoded[:, j * ft], atol=1e-4)


@pytest.mark.parametrize("factors, width, latent", [((2, 4), 64, (2, 8, 16, 16)), ((1, 2), 8, (4, 8, 32, 32)),
                                                    ((4, 8), 8, (1, 8, 8, 8))])
def test_a_block_becomes_latents_of_its_shape_and_back(factors, width, latent):
    stage = LatentStage(channels=8, factors=factors, width=width)
    video = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = stage.encode(video)
        assert z.shape == (2, *latent)
        assert stage.decode(z).shape == video.shape
    assert (stage.channels, stage.factors) == (8, factors)


def test_a_few_dozen_steps_on_a_real_clip_lower_the_reconstruction_error():
    clip = street_clip()
    torch.manual_seed(0)
    stage = LatentStage(channels=4, width=16).train()
    optimizer = torch.optim.AdamW(stage.parameters(), lr=3e-3)
    errors = []
    for _ in range(40):
        mse, recon = stage.loss(clip)
        mse.backward()
        optimizer.step()
        optimizer.zero_grad()
        errors.append(mse.item())
    assert recon.shape == clip.shape
    assert errors[-1] < 0.5 * errors[0], errors  # and not by chance: a steady fall, not one lucky step
    assert sum(errors[-5:]) < 0.5 * sum(errors[:5])


def test_the_scale_brings_the_latents_to_unit_variance():
    stage = small_stage()
    clips = [torch.rand(2, 4, 3, 32, 32) * 2 - 1 for _ in range(3)]
    with torch.no_grad():
        raw = stage.encode(clips[0])
        scale = stage.set_scale(clips)
        assert abs(scale - 1.0) > 0.05  # the test means something only where the raw latents are not unit already
        torch.testing.assert_close(stage.encode(clips[0]), raw * scale)
        assert 0.7 < torch.cat([stage.encode(c).flatten() for c in clips]).std().item() < 1.3
        torch.testing.assert_close(stage.decode(stage.encode(clips[0])), stage.decode(raw * scale))


def test_save_and_load_give_the_same_outputs(tmp_path):
    stage = small_stage()
    stage.set_scale([torch.rand(2, 4, 3, 32, 32) * 2 - 1])
    stage.save(tmp_path / "stage", training={"steps": 3})
    torch.manual_seed(1)
    loaded = LatentStage(channels=4, width=16)
    video = torch.rand(1, 4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(loaded.encode(video), stage.encode(video))  # other weights before loading
        loaded.load(tmp_path / "stage")
        assert torch.equal(loaded.encode(video), stage.encode(video))
        assert torch.equal(loaded.decode(stage.encode(video)), stage.decode(stage.encode(video)))
    record = json.loads((tmp_path / "stage" / SHAPE_NAME).read_text())
    assert (record["channels"], record["factors"], record["width"]) == (4, [2, 4], 16)
    with pytest.raises(ElasticTokError, match=r"another shape \(width 16 there, 32 here\)") as refused:
        LatentStage(channels=4, width=32).load(tmp_path / "stage")
    assert "\n" not in str(refused.value)
    with pytest.raises(ElasticTokError, match="stage.json: no such file"):
        loaded.load(tmp_path / "absent")


def test_flextok_trains_with_its_latent_stage_frozen(real_video):
    model = latent_micro()
    assert (model.p, model.patch_dim) == (16, 16) == (model.config.patches_per_block, model.config.patch_dim)
    stage_before = {k: v.clone() for k, v in model.stage.state_dict().items()}
    rest_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("stage.")}
    assert stage_before and all(k.startswith("stage.") for k in set(model.state_dict()) - set(rest_before))
    optimizer = build_optimizer(model, TrainConfig(model="flextok-micro", lr=1e-2, weight_decay=0.1))
    out = model.train()(real_video)
    out.loss.backward()
    optimizer.step()
    assert torch.isfinite(out.loss) and out.recon.shape == real_video.shape
    assert all(p.grad is None and not p.requires_grad for p in model.stage.parameters())
    assert all(torch.equal(v, stage_before[k]) for k, v in model.stage.state_dict().items())
    changed = [k for k, v in model.state_dict().items() if k in rest_before and not torch.equal(v, rest_before[k])]
    assert changed  # the flow did train


def test_a_training_step_runs_the_stage_decoder_only_when_its_frames_are_asked_for(real_video, monkeypatch):
    """Training logs the error where the flow works; the stage's decoder runs once, when ``recon`` is read,
    and gives the x0 estimate's frames."""
    model = perturbed(latent_micro()).train()
    decoded = []
    decode = model.stage.decode
    monkeypatch.setattr(model.stage, "decode", lambda latent: decoded.append(latent.shape) or decode(latent))
    out = model(real_video)
    out.loss.backward()
    assert decoded == []
    patches = model.patchify(real_video).view_as(out.estimate)
    assert out.mse.item() == pytest.approx((out.estimate - patches).pow(2).mean().item(), rel=1e-5)
    recon, again = out.recon, out.recon
    assert len(decoded) == 1 and recon is again and recon.shape == real_video.shape
    torch.testing.assert_close(recon, model.unpatchify(out.estimate.detach().flatten(1, 2)))


def test_a_block_is_coded_alone_as_in_the_whole_clip(real_video):
    """The stage codes each block on its own: the tokenizer, one block at a time, gives the tokens of
    ``encode`` on the whole clip, and the streamed patches are the whole clip's."""
    model = perturbed(latent_micro())
    fpb = model.config.frames_per_block
    whole = model.patchify(real_video)
    alone = torch.cat([model.patchify(real_video[:, i:i + fpb]) for i in range(0, real_video.shape[1], fpb)], dim=1)
    torch.testing.assert_close(alone, whole, rtol=0, atol=1e-5)  # batched convolutions round differently
    encoded = tokenize(model, real_video, f"tokens:{model.r}")[0]
    assert torch.equal(encoded.tokens, model.encode(real_video).indices[0])


def test_a_saved_flextok_carries_its_stage(tmp_path, real_video):
    model = perturbed(latent_micro())
    model.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert isinstance(loaded.stage, LatentStage) and not any(p.requires_grad for p in loaded.stage.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.patchify(real_video), model.patchify(real_video))


# Fingerprints as the code before the stage fields computed them; token files record them.
FINGERPRINTS_BEFORE = {"first bundled flextok": "e9004dbde1f5b631", "flextok-tiny": "137791a38881d10c",
                       "flextok-micro": "f372d4eac5aae30c"}
ONE_STEP_CONFIG = Path(__file__).parents[1] / "fixtures" / "flextok-one-step" / "config.json"


def test_a_flextok_saved_before_the_stage_fields_loads_with_its_fingerprint():
    """The first bundled model's config.json has no stage fields: it loads as the pixel model it is, with the
    fingerprint it had, as do the presets; a latent stage's fields change it."""
    saved = json.loads(ONE_STEP_CONFIG.read_text())
    assert not any(key.startswith("stage_") for key in saved)
    model = FlexTok(FlexTokConfig.from_dict(saved))
    assert model.config.input_stage == "pixels" and not list(model.stage.parameters())
    assert model.config.fingerprint() == FINGERPRINTS_BEFORE["first bundled flextok"]
    for preset in ("flextok-tiny", "flextok-micro"):  # the presets now read one-step estimates as context
        assert FlexTokConfig.from_preset(preset, context_from="sample").fingerprint() == FINGERPRINTS_BEFORE[preset]
        assert FlexTokConfig.from_preset(preset).fingerprint() != FINGERPRINTS_BEFORE[preset]
    assert latent_micro().config.fingerprint() != FINGERPRINTS_BEFORE["flextok-micro"]
    wider = latent_micro(stage_width=32).config.fingerprint()
    assert wider != latent_micro().config.fingerprint()  # the stage's shape is part of the model's numerics


def test_stage_fields_are_checked():
    with pytest.raises(ElasticTokError, match="stage_factors must be"):
        FlexTokConfig.from_preset("flextok-micro", input_stage="latent", stage_factors=(3, 4))
    with pytest.raises(ElasticTokError, match="stage_factors must be"):
        FlexTokConfig.from_preset("flextok-micro", stage_factors=(2, 1))  # no space-to-depth below 2x
    with pytest.raises(ElasticTokError, match="not divisible by the patch 8x8 times the input stage's spatial"):
        FlexTokConfig.from_preset("flextok-micro", input_stage="latent", stage_factors=(2, 8))  # 32 < 8 x 8
    with pytest.raises(ElasticTokError, match="frames_per_block 2 is not divisible by Tp=1 times the input stage's"):
        FlexTokConfig.from_preset("flextok-micro", input_stage="latent", stage_factors=(4, 4))
    FlexTokConfig.from_preset("flextok-micro", stage_factors=(4, 8))  # pixels: the stage's shape plays no part
    with pytest.raises(ElasticTokError, match="stage_width"):
        FlexTokConfig.from_preset("flextok-micro", stage_width=0)


SHIPPED_STAGE = Path(__file__).resolve().parents[2] / "src" / "elastictok" / "weights" / "stages" / "video-ae"


@pytest.mark.skipif(not (SHIPPED_STAGE / SHAPE_NAME).is_file(), reason=f"no trained stage in {SHIPPED_STAGE}")
def test_the_shipped_stage_reconstructs_the_held_out_clip():
    """The shipped stage (float16 weights, loaded as float32) reconstructs the bundled clip, which it never
    trained on, well above a flat colour per clip (a stage that learnt nothing scores about that), block by block
    as FlexTok runs it, and its latents have about unit variance there too."""
    from elastictok.metrics.quality import mse_per_block, psnr_from_mse

    stage = LatentStage()
    stage.load(SHIPPED_STAGE)
    video = to_model(fit_to_resolution(VideoReader(sample_video()).read_all(), (64, 64)))[None]  # (1, 80, 3, 64, 64)
    blocks = video.reshape(-1, 4, *video.shape[2:])  # (20, 4, 3, 64, 64): one block at a time, as FlexTok codes
    with torch.no_grad():
        latents = stage.encode(blocks)
        recon = stage.decode(latents).reshape(video.shape)
    flat = video.mean(dim=(1, 3, 4), keepdim=True).expand_as(video)
    psnr = psnr_from_mse(mse_per_block(recon.clamp(-1, 1), video, 4)).mean()
    assert psnr > psnr_from_mse(mse_per_block(flat, video, 4)).mean() + 6.0
    assert 0.5 < latents.std().item() < 2.0
