"""Every registered family passes the same test of ``models.base.ModelFamily``: the one interface the layers
above ``models/`` see, implemented in full, with what differs declared by the family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elastictok import PRESETS, ElasticTokError, detokenize, tokenize
from elastictok.models.base import ModelFamily
from elastictok.models.coder import BlockCoder, Sampler
from elastictok.models.registry import FAMILIES, config_from_preset, from_pretrained

MICRO = {"elastictok": "micro", "flextok": "flextok-micro"}


@pytest.fixture(params=sorted(FAMILIES))
def model(request) -> ModelFamily:
    torch.manual_seed(0)
    config = config_from_preset(MICRO[request.param])
    return FAMILIES[request.param](config).eval()


def video_for(model, blocks: int = 2) -> torch.Tensor:
    """(1, T, 3, H, W) smooth frames in [-1, 1] at the model's size."""
    c = model.config
    t = blocks * c.frames_per_block
    ramp = torch.linspace(-0.8, 0.8, c.resolution[1])
    frames = ramp.roll(3, 0).expand(t, 3, c.resolution[0], -1) * torch.linspace(0.5, 1, t)[:, None, None, None]
    return frames[None].contiguous()


def test_every_family_is_registered_with_a_micro_preset():
    assert set(MICRO) == set(FAMILIES)
    assert all(name in PRESETS for name in MICRO.values())  # PRESETS covers every family


def test_a_family_implements_the_interface_in_full_and_declares_what_differs(model):
    family = type(model)
    assert isinstance(model, ModelFamily) and not family.__abstractmethods__
    assert FAMILIES[family.family] is family and isinstance(family.display_name, str) and family.display_name
    assert issubclass(family.coder_class, BlockCoder) and not family.coder_class.__abstractmethods__
    units = [m for m in model.modules() if isinstance(m, family.fsdp_units)]
    assert units and all(issubclass(u, nn.Module) for u in family.fsdp_units)  # FSDP shards something real
    for flag in (family.supports_sequence_parallel, family.trains_several_lengths):
        assert isinstance(flag, bool)
    if not family.supports_sequence_parallel:
        with pytest.raises(ElasticTokError, match=family.display_name):
            model.check_sequence_split(64, 2)


def test_a_family_trains_through_forward_and_its_keep_sampler(model):
    c = model.config
    video = video_for(model)
    sampler = model.keep_sampler("elastic")
    keep = sampler(1, 2, torch.Generator().manual_seed(0)) if sampler else torch.full((1, 2), c.tokens_per_block)
    assert keep.shape == (1, 2) and c.min_tokens <= keep.min() and keep.max() <= c.tokens_per_block
    out = model.train()(video, keep)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.recon.shape == video.shape and out.mse.dim() == out.kl.dim() == 0
    assert model.keep_sampler("full") is None  # every other mask mode is the trainer's


def test_a_family_tokenizes_decodes_and_reloads_through_the_interface(model, tmp_path):
    c = model.config
    video = video_for(model)
    model.as_video(video)
    encoded = tokenize(model, video, f"tokens:{c.tokens_per_block}")[0]
    assert encoded.family == model.family and encoded.counts.tolist() == [c.tokens_per_block] * 2
    decoded = detokenize(model, encoded)
    assert decoded.shape == video.shape[1:] and torch.isfinite(decoded).all()
    model.save_pretrained(tmp_path / "saved")
    loaded = from_pretrained(tmp_path / "saved")
    assert type(loaded) is type(model) and loaded.pretrained_dir == tmp_path / "saved"
    assert torch.equal(detokenize(loaded, encoded), decoded)  # the same weights decode the same frames


def test_a_family_declares_whether_its_decoder_samples(model):
    """A sampling family takes steps, guidance and seed per call over its config's and records them in the
    tokens; any other refuses them in one line naming itself."""
    family, c, video = type(model), model.config, video_for(model, blocks=1)
    assert isinstance(family.has_sampler, bool)
    if family.has_sampler:
        assert model.sampler() == Sampler(c.steps, c.guidance, c.seed)
        encoded = tokenize(model, video, f"tokens:{c.tokens_per_block}", steps=2, seed=1)[0]
        assert encoded.sampler == Sampler(2, c.guidance, 1) == model.sampler(steps=2, seed=1)
    else:
        assert model.sampler() is None
        with pytest.raises(ElasticTokError, match=f"{family.display_name} decodes .* no sampler"):
            tokenize(model, video, f"tokens:{c.tokens_per_block}", steps=2)


def test_a_family_that_does_not_declare_its_coder_is_refused_when_defined():
    with pytest.raises(TypeError, match="coder_class"):
        class Half(ModelFamily, nn.Module):  # noqa: F841
            family, display_name, config_class, fsdp_units = "half", "Half", object, ()
