"""Model options beyond the original design: the conv output head and input stem, an encoder without
mask conditioning, and decoding several kept lengths per sample in one forward."""

from __future__ import annotations

import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig, ElasticTokError
from elastictok.training.masks import KeepSampler


def build(**overrides) -> ElasticTok:
    torch.manual_seed(0)
    return ElasticTok(ElasticTokConfig.from_preset("micro", **overrides)).eval()


@pytest.fixture
def conv_uncond() -> ElasticTok:
    model = build(output_head="conv", encoder_mask_conditioning=False, head_channels=8)
    with torch.no_grad():  # non-zero conv biases so that "no effect" below is not trivially true
        for p in model.out_proj.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_conv_head_shapes_and_block_causality(conv_uncond, real_video):
    model, m = conv_uncond, conv_uncond.config.tokens_per_block
    latents = model.encode(real_video)
    recon = model.decode(latents)
    assert recon.shape == real_video.shape
    # The convolutions mix pixels within a frame only: changing block 2's input leaves blocks 0 and 1.
    changed = real_video.clone()
    changed[:, 4:] = changed[:, 4:].flip(-1)
    other = model.decode(model.encode(changed))
    fpb = model.config.frames_per_block
    assert torch.equal(other[:, :2 * fpb], recon[:, :2 * fpb])
    assert not torch.allclose(other[:, 2 * fpb:], recon[:, 2 * fpb:])
    assert latents.z.shape[1] == 3 * m


def test_conv_head_mixes_across_patch_borders(conv_uncond, real_video):
    """A linear head's pixels depend on their own patch's token only; the conv head's border pixels do not."""
    model = conv_uncond
    z = model.encode(real_video[:, :2]).z.clone()
    base = model.decode(z)
    z[:, 0] += 1.0  # perturb the first token (top-left patch of frame 0) only
    delta = (model.decode(z) - base).abs()[0, 0].sum(0)  # (H, W) of frame 0
    hp, wp = model.config.patch_size[1:]
    assert delta[:hp, :wp].sum() > 0
    assert delta[:hp, wp].sum() > 0  # the pixel column right of the patch border changed too


@pytest.fixture
def conv_stem() -> ElasticTok:
    model = build(input_stem="conv", stem_channels=4, encoder_mask_conditioning=False)
    with torch.no_grad():
        for p in model.in_proj.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_conv_stem_keeps_block_causality(conv_stem, real_video):
    """The stem convolves within a frame: changing block 2's pixels leaves blocks 0 and 1's tokens."""
    model = conv_stem
    changed = real_video.clone()
    changed[:, 4:] = changed[:, 4:].flip(-1)
    z, other = model.encode(real_video).z, model.encode(changed).z
    m = model.config.tokens_per_block
    assert torch.equal(z[:, :2 * m], other[:, :2 * m])
    assert not torch.allclose(z[:, 2 * m:], other[:, 2 * m:])
    assert model.decode(model.encode(real_video)).shape == real_video.shape


def test_conv_stem_reads_across_patch_borders(conv_stem, real_video):
    """A linear stem's first token depends on its own patch only; the conv stem's also on the next column."""
    clip = real_video[:, :2]
    hp, wp = conv_stem.config.patch_size[1:]
    changed = clip.clone()
    changed[:, 0, :, :hp, wp] += 0.5  # the pixel column just right of the first patch, frame 0
    for model, reads_it in ((conv_stem, True), (build(), False)):
        first_token = [model.in_proj(model.patchify(x))[:, 0] for x in (clip, changed)]
        assert torch.equal(*first_token) is not reads_it


def test_conv_stem_needs_whole_frames(conv_stem):
    with pytest.raises(ElasticTokError, match="whole frames"):
        conv_stem.in_proj(torch.zeros(1, 5, conv_stem.config.patch_dim))


def test_sequence_parallel_shards_hold_whole_frames_for_the_conv_stem(conv_stem):
    tokens_per_block = conv_stem.config.tokens_per_block  # 2 frames of 16 tokens
    conv_stem.check_sequence_split(tokens_per_block, 2)  # a frame per rank
    with pytest.raises(ElasticTokError, match="whole frames \\(16 tokens each"):
        conv_stem.check_sequence_split(tokens_per_block, 4)
    build().check_sequence_split(tokens_per_block, 4)  # a linear stem and head split anywhere


def test_unconditioned_encoder_is_one_pass_for_every_count(conv_uncond, real_video):
    """Without mask conditioning the kept tokens are a prefix of one encoding, whatever the count."""
    model = conv_uncond
    full = model.encode(real_video)
    part = model.encode(real_video, torch.tensor([[3, 10, 32]]))
    mask = model.keep_mask(part.keep)[..., None]
    assert torch.equal(part.z, full.z * mask)
    assert not hasattr(model, "is_kept_embed")


def test_dropped_tokens_have_no_effect_with_conv_head(conv_uncond, real_video):
    model = conv_uncond
    keep = torch.tensor([[4, 7, 20]])
    latents = model.encode(real_video, keep)
    noisy = latents.z + torch.randn_like(latents.z) * ~model.keep_mask(keep)[..., None]
    assert torch.equal(model.decode(noisy, keep), model.decode(latents))


@pytest.mark.parametrize("conditioned", [True, False])
def test_several_lengths_per_sample_average_the_single_length_losses(conditioned, real_video):
    model = build(encoder_mask_conditioning=conditioned)
    keeps = torch.tensor([[[32, 32, 32]], [[5, 17, 2]], [[9, 2, 30]]])  # (L=3, B=1, n_blocks=3)
    together = model(real_video, keeps)
    alone = [model(real_video, k) for k in keeps]
    assert together.mse.item() == pytest.approx(sum(o.mse.item() for o in alone) / 3, rel=1e-4)
    assert torch.allclose(together.recon, alone[0].recon, atol=1e-5)


def test_keep_sampler_modes():
    generator = torch.Generator().manual_seed(0)
    keep = KeepSampler("elastic+full", 2, 32, lengths=3)(4, 5, generator)
    assert keep.shape == (3, 4, 5)
    assert (keep[0] == 32).all() and keep.min() >= 2 and keep.max() <= 32 and (keep[1:] < 32).any()
    assert KeepSampler("fixed:0.5", 2, 32, lengths=2)(4, 5, generator).unique().tolist() == [16]
    with pytest.raises(ElasticTokError, match="elastic\\+full needs"):
        KeepSampler("elastic+full", 2, 32)
    with pytest.raises(ElasticTokError, match="output_head"):
        ElasticTokConfig.from_preset("micro", output_head="deconv")
    with pytest.raises(ElasticTokError, match="input_stem"):
        ElasticTokConfig.from_preset("micro", input_stem="patchify")
    with pytest.raises(ElasticTokError, match="stem_channels"):
        ElasticTokConfig.from_preset("micro", stem_channels=0)


def test_new_fields_leave_earlier_fingerprints_unchanged():
    """Token files record the fingerprint: models written before the new fields must keep theirs."""
    config = ElasticTokConfig.from_preset("tiny")
    data = config.to_dict()
    for key in ("encoder_mask_conditioning", "output_head", "head_channels", "input_stem", "stem_channels"):
        data.pop(key)
    assert ElasticTokConfig.from_dict(data).fingerprint() == config.fingerprint()
    assert ElasticTokConfig.from_preset("tiny", output_head="conv").fingerprint() != config.fingerprint()
    assert ElasticTokConfig.from_preset("tiny", input_stem="conv").fingerprint() != config.fingerprint()


def test_feed_forward_conv_keeps_block_causality_and_the_cache(real_video):
    """The feed-forward convolution mixes a frame's token grid only: blocks stay causal, and encoding
    block by block through the KV cache gives what one pass over the whole clip gives."""
    model = build(ffn_conv=True, encoder_mask_conditioning=False)
    m = model.config.tokens_per_block
    whole = model.encode(real_video).z
    changed = real_video.clone()
    changed[:, 4:] = changed[:, 4:].flip(-1)
    other = model.encode(changed).z
    assert torch.equal(whole[:, :2 * m], other[:, :2 * m]) and not torch.allclose(whole[:, 2 * m:], other[:, 2 * m:])
    patches = model.patchify(real_video)
    keep = torch.ones(patches.shape[:2], dtype=torch.bool)
    first, past = model.encode_patches(patches[:, :m], keep[:, :m])
    second, _ = model.encode_patches(patches[:, m:2 * m], keep[:, m:2 * m], past)
    torch.testing.assert_close(torch.cat([first.z, second.z], 1), whole[:, :2 * m])
    assert not torch.allclose(whole, build(encoder_mask_conditioning=False).encode(real_video).z)
