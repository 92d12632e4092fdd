"""Behaviour of the ElasticTok model that users rely on."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig, ElasticTokError
from elastictok.layers.bottlenecks import FSQ


def test_video_and_image_shapes(micro, real_video):
    c = micro.config
    latents = micro.encode(real_video)
    assert latents.z.shape == (1, 3 * c.tokens_per_block, c.latent_dim)
    assert latents.indices.shape == (1, 3 * c.tokens_per_block)
    assert micro.decode(latents).shape == real_video.shape
    image = real_video[:, 0]
    out = micro(image)
    assert out.recon.shape == image.shape
    assert micro.encode(image).keep.shape == (1, 1)


def test_keep_counts_are_exact(micro, micro_vae, real_video):
    keep = torch.tensor([[2, 17, 32]])
    latents = micro.encode(real_video, keep)
    mask = micro.keep_mask(keep).view(1, 3, -1)
    assert mask.sum(-1).tolist() == [[2, 17, 32]]
    assert mask[0, 1, :17].all() and not mask[0, 1, 17:].any()  # a left-aligned prefix
    z = latents.z.view(1, 3, micro.config.tokens_per_block, -1)
    assert (z[0, 0, 2:] == 0).all() and (z[0, 1, 17:] == 0).all()
    # Continuous latents are never exactly zero by chance: count the surviving tokens directly.
    z = micro_vae.encode(real_video, keep).z.view(1, 3, micro.config.tokens_per_block, -1)
    assert (z.abs().sum(-1) > 0).sum(-1).tolist() == [[2, 17, 32]]


def test_dropped_tokens_have_no_effect(micro, real_video):
    keep = torch.tensor([[5, 9, 20]])
    latents = micro.encode(real_video, keep)
    reference = micro.decode(latents)
    noisy = latents.z + torch.randn_like(latents.z) * (~micro.keep_mask(keep))[..., None]
    assert not torch.equal(noisy, latents.z)
    torch.testing.assert_close(micro.decode(noisy, keep), reference, rtol=0, atol=0)


@pytest.mark.parametrize("changed_block", [1, 2])
def test_block_causality(micro, real_video, changed_block):
    fpb = micro.config.frames_per_block
    other = real_video.clone()
    other[:, changed_block * fpb:(changed_block + 1) * fpb] = -other[:, changed_block * fpb:(changed_block + 1) * fpb]
    keep = torch.tensor([[10, 20, 30]])
    with torch.no_grad():
        a, b = micro.encode(real_video, keep), micro.encode(other, keep)
        ra, rb = micro.decode(a), micro.decode(b)
    m = micro.config.tokens_per_block
    cut = changed_block * m
    torch.testing.assert_close(a.z[:, :cut], b.z[:, :cut], rtol=0, atol=1e-6)
    assert not torch.allclose(a.z[:, cut:], b.z[:, cut:])
    torch.testing.assert_close(ra[:, :changed_block * fpb], rb[:, :changed_block * fpb], rtol=0, atol=1e-6)
    # The decoder alone is causal too: perturb only the latents of later blocks.
    z = a.z.clone()
    z[:, cut:] += 0.5
    torch.testing.assert_close(micro.decode(z, keep)[:, :changed_block * fpb], ra[:, :changed_block * fpb],
                               rtol=0, atol=1e-6)


def test_changing_a_later_keep_leaves_earlier_blocks(micro, real_video):
    a = micro(real_video, torch.tensor([[10, 20, 30]]))
    b = micro(real_video, torch.tensor([[10, 20, 4]]))
    fpb = micro.config.frames_per_block
    torch.testing.assert_close(a.recon[:, :2 * fpb], b.recon[:, :2 * fpb], rtol=0, atol=1e-6)
    assert not torch.allclose(a.recon[:, 2 * fpb:], b.recon[:, 2 * fpb:])


def test_cached_blocks_match_a_full_pass(micro, real_video):
    keep = torch.tensor([[7, 32, 3]])
    patches, mask = micro.patchify(real_video), micro.keep_mask(keep)
    full, _ = micro.encode_patches(patches, mask)
    recon_full, _ = micro.decode_latents(full.z)
    m, enc_cache, dec_cache, zs, recons = micro.config.tokens_per_block, None, None, [], []
    for k in range(3):
        part, enc_cache = micro.encode_patches(patches[:, k * m:(k + 1) * m], mask[:, k * m:(k + 1) * m], enc_cache)
        recon, dec_cache = micro.decode_latents(part.z, dec_cache)
        zs.append(part.z)
        recons.append(recon)
    torch.testing.assert_close(torch.cat(zs, 1), full.z, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(recons, 1), recon_full, atol=1e-5, rtol=0)


def test_every_prefix_length_decodes(micro, real_video):
    c = micro.config
    errors = []
    for n in range(c.min_tokens, c.tokens_per_block + 1):
        out = micro(real_video, n)
        assert torch.isfinite(out.recon).all() and out.recon.abs().max() <= 1
        errors.append(out.mse.item())
    assert len(set(errors)) > len(errors) // 2  # the count really changes the reconstruction


def test_fsq_indices_round_trip():
    fsq = FSQ((8, 5, 5, 3))
    indices = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(indices)
    assert codes.min() >= -1 and codes.max() <= 1
    assert torch.equal(fsq.codes_to_indices(codes), indices)
    assert len({tuple(c.tolist()) for c in codes}) == fsq.codebook_size
    z = torch.randn(4, 10, 4) * 3
    quantised = fsq(z)
    torch.testing.assert_close(fsq.indices_to_codes(fsq.codes_to_indices(quantised)), quantised)


def test_fsq_straight_through_gradient():
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    z = torch.randn(2, 3, 6, requires_grad=True)
    fsq(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_vae_samples_in_training_and_uses_the_mean_otherwise(micro_vae, real_video):
    micro_vae.eval()
    torch.testing.assert_close(micro_vae.encode(real_video).z, micro_vae.encode(real_video).z)
    micro_vae.train()
    assert not torch.equal(micro_vae.encode(real_video).z, micro_vae.encode(real_video).z)
    out = micro_vae(real_video, torch.tensor([[4, 8, 32]]))
    assert out.kl > 0 and torch.isclose(out.loss, out.mse + micro_vae.config.kl_weight * out.kl)


def test_vae_kl_counts_kept_tokens_only(micro_vae, real_video):
    micro_vae.eval()
    few = micro_vae(real_video, 2).kl
    many = micro_vae(real_video, 32).kl
    assert 0 < few < many


def test_deterministic(micro, real_video):
    torch.manual_seed(1)
    a = ElasticTok(micro.config)
    torch.manual_seed(1)
    b = ElasticTok(micro.config)
    torch.testing.assert_close(a(real_video, 9).recon, b(real_video, 9).recon, rtol=0, atol=0)


def test_save_and_load_round_trip(micro, real_video, tmp_path):
    micro.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ElasticTok.from_pretrained(tmp_path / "m")
    assert loaded.config == micro.config
    torch.testing.assert_close(loaded(real_video, 11).recon, micro(real_video, 11).recon, rtol=0, atol=0)


def test_ctrl_c_while_saving_leaves_a_matching_pair(micro, real_video, tmp_path, monkeypatch):
    """Weights and config land together: a Ctrl-C as the weights are written waits for the config too."""
    from elastictok.models import files

    ElasticTok(ElasticTokConfig.from_preset("micro", width=64)).save_pretrained(tmp_path / "m")  # an older model
    save_file = files.save_file

    def save_then_ctrl_c(*args, **kwargs):
        save_file(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, between the two files

    monkeypatch.setattr(files, "save_file", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        micro.save_pretrained(tmp_path / "m")
    loaded = ElasticTok.from_pretrained(tmp_path / "m")
    assert loaded.config == micro.config
    torch.testing.assert_close(loaded(real_video, 11).recon, micro(real_video, 11).recon, rtol=0, atol=0)


def test_half_precision_weights_load_as_float32(micro, real_video, tmp_path):
    micro.save_pretrained(tmp_path / "half", dtype=torch.float16)
    full_size = sum(v.numel() * 4 for v in micro.state_dict().values())
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * full_size
    loaded = ElasticTok.from_pretrained(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for name, value in micro.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value.half().float(), rtol=0, atol=0)


def test_damaged_model_files_give_clear_errors(micro, tmp_path):
    micro.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ElasticTokError, match="not a readable safetensors"):
        ElasticTok.from_pretrained(tmp_path / "m")
    micro.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["width"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ElasticTokError, match="does not match its config"):
        ElasticTok.from_pretrained(tmp_path / "m")
    with pytest.raises(ElasticTokError, match="no model directory or bundled model"):
        ElasticTok.from_pretrained(tmp_path / "nothing-here")


@pytest.mark.parametrize("shape, message", [
    ((1, 32, 32), "expected a video"),
    ((1, 2, 4, 32, 32), "3 colour channels"),
    ((1, 2, 3, 33, 32), "33x32 but this model takes 32x32"),
    ((1, 3, 3, 32, 32), "not a multiple of frames_per_block"),
    ((0, 2, 3, 32, 32), "empty input"),
])
def test_bad_shapes_are_rejected(micro, shape, message):
    with pytest.raises(ElasticTokError, match=message):
        micro.encode(torch.zeros(shape))


def test_bad_values_and_keep_are_rejected(micro, real_video):
    with pytest.raises(ElasticTokError, match=r"\[-1, 1\]"):
        micro.encode(real_video * 3)
    with pytest.raises(ElasticTokError, match=r"\[-1, 1\]"):
        micro.encode(torch.full_like(real_video, float("nan")))
    with pytest.raises(ElasticTokError, match="float tensor"):
        micro.encode(torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ElasticTokError, match=r"\[Mmin, Mmax\] = \[2, 32\]"):
        micro.encode(real_video, torch.tensor([[1, 5, 5]]))
    with pytest.raises(ElasticTokError, match=r"\[Mmin, Mmax\]"):
        micro.encode(real_video, 33)
    with pytest.raises(ElasticTokError, match="shape"):
        micro.encode(real_video, torch.tensor([[4, 4]]))
    with pytest.raises(ElasticTokError, match="integer"):
        micro.encode(real_video, torch.tensor([[4.0, 4.0, 4.0]]))


def test_config_presets_and_validation():
    fsq = ElasticTokConfig.from_preset("official-fsq-200m")
    assert (fsq.tokens_per_block, fsq.min_tokens, fsq.patch_dim, fsq.latent_dim) == (4096, 256, 192, 6)
    vae = ElasticTokConfig.from_preset("official-vae-200m")
    assert (vae.tokens_per_block, vae.min_tokens, vae.pre_quant_dim) == (2048, 128, 16)
    with torch.device("meta"):
        params = sum(p.numel() for p in ElasticTok(fsq).parameters())
    assert 200e6 < params < 220e6  # "about 210M"
    assert ElasticTokConfig.from_dict(json.loads(json.dumps(fsq.to_dict()))) == fsq
    with pytest.raises(ElasticTokError, match="not divisible by the patch"):
        ElasticTokConfig(resolution=(60, 64))
    with pytest.raises(ElasticTokError, match="unknown preset"):
        ElasticTokConfig.from_preset("huge")
    with pytest.raises(ElasticTokError, match="unknown ElasticTokConfig fields"):
        ElasticTokConfig.from_dict({"widht": 3})


def test_preset_overrides_derive_min_tokens_again():
    """A preset's derived Mmin follows an overridden shape (it used to keep the preset's own value)."""
    config = ElasticTokConfig.from_preset("tiny", resolution=(128, 128))
    assert config.tokens_per_block == 512 and config.min_tokens == 32
    assert ElasticTokConfig.from_preset("tiny").min_tokens == 8
    assert ElasticTokConfig.from_preset("tiny", resolution=(128, 128), min_tokens=8).min_tokens == 8


def test_saved_models_name_their_family(micro, tmp_path):
    import elastictok
    from elastictok.models.base import ModelFamily

    assert isinstance(micro, ModelFamily) and micro.codebook_size == 8**3 * 5**3
    micro.save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    assert data["family"] == "elastictok"
    assert isinstance(elastictok.from_pretrained(tmp_path / "m"), ElasticTok)
    del data["family"]  # saved before families existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(data))
    assert isinstance(elastictok.from_pretrained(tmp_path / "m"), ElasticTok)
    (tmp_path / "m" / "config.json").write_text(json.dumps({**data, "family": "nope"}))
    with pytest.raises(ElasticTokError, match="unknown model family 'nope'"):
        elastictok.from_pretrained(tmp_path / "m")
