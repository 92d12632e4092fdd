"""Behaviour of the FlexTok family that users rely on: shapes, prefix invariance, block causality,
seeded sampling, dropped tokens, the KV-cached streaming paths, files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from elastictok import PRESETS, ElasticTokError, detokenize, tokenize
from elastictok.models.flextok import FlexLatents, FlexTok, FlexTokConfig, NestedDropout
from elastictok.models.flextok.blocks import encoder_mask


@pytest.fixture(params=["learned", "sincos"])
def flex(request) -> FlexTok:
    """The micro preset, with each kind of patch position, with every weight perturbed: adaLN-zero starts
    with closed gates (the decoder would output zeros whatever its inputs), which would make the invariance
    tests pass vacuously."""
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig.from_preset("flextok-micro", patch_position=request.param))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pre_quant_features(model: FlexTok, video: torch.Tensor) -> torch.Tensor:
    """The encoder's continuous register features (B, n*R, C) just before FSQ rounding."""
    captured = []
    handle = model.pre_quant.register_forward_hook(lambda m, i, o: captured.append(o.flatten(1, 2)))
    try:
        model.encode(video)
    finally:
        handle.remove()
    return torch.cat(captured, dim=1)


def test_shapes(flex, real_video):
    c = flex.config
    latents = flex.encode(real_video, keep=3)
    assert latents.z.shape == (1, 3 * c.registers, c.latent_dim)
    assert latents.indices.shape == (1, 3 * c.registers)
    assert latents.keep.tolist() == [[3, 3, 3]]
    assert int(latents.indices.max()) < c.codebook_size
    assert flex.decode(latents, steps=2, generator=seeded()).shape == real_video.shape
    out = flex(real_video)
    assert out.recon.shape == real_video.shape and out.loss.dim() == 0 and out.t.shape == (1, 3)
    image = real_video[:, 0]
    assert flex(image).recon.shape == image.shape
    assert flex.decode(flex.encode(image), steps=1, image=True, generator=seeded()).shape == image.shape
    assert (flex.tokens_per_block, flex.min_tokens) == (c.registers, 1)


def test_encoder_registers_never_see_later_registers(flex, real_video):
    k = 3
    before = pre_quant_features(flex, real_video).view(1, 3, flex.r, -1)
    with torch.no_grad():
        flex.register_embed[k:] += torch.randn_like(flex.register_embed[k:])
    after = pre_quant_features(flex, real_video).view(1, 3, flex.r, -1)
    torch.testing.assert_close(after[:, :, :k], before[:, :, :k], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, :, k:], before[:, :, k:], atol=1e-3)  # the change did reach the rest


def test_decoder_prefix_invariance(flex, real_video):
    """Changing registers k.. (any codes at all) leaves the decoder's use of 0..k-1 unchanged."""
    keep = torch.tensor([[1, 4, 6]])
    latents = flex.encode(real_video)
    tail = ~flex.keep_mask(keep)[..., None]
    other = torch.where(tail, flex.quantizer.indices_to_codes(torch.randint(
        flex.config.codebook_size, latents.z.shape[:2], generator=seeded(1))), latents.z)
    assert not torch.equal(other, latents.z)
    a = flex.decode(latents.z, keep, steps=3, guidance=2.0, generator=seeded())
    b = flex.decode(other, keep, steps=3, guidance=2.0, generator=seeded())
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = flex.decode(latents.z, keep + 1, steps=3, guidance=2.0, generator=seeded())
    assert not torch.allclose(a, c, atol=1e-4)  # a kept token does matter


def test_dropped_tokens_have_no_effect(flex, real_video):
    """Encoding with keep k equals encoding everything and dropping at decode time; dropped slots are zero."""
    keep = torch.tensor([[2, 5, 8]])
    dropped, full = flex.encode(real_video, keep), flex.encode(real_video)
    tail = ~flex.keep_mask(keep)
    assert (dropped.z[tail] == 0).all() and torch.equal(dropped.z[~tail], full.z[~tail])
    zero_index = flex.quantizer.codes_to_indices(torch.zeros(flex.config.latent_dim))
    assert (dropped.indices[tail] == zero_index).all()
    a = flex.decode(dropped, steps=2, generator=seeded())
    b = flex.decode(full, keep, steps=2, generator=seeded())
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("changed_block", [1, 2])
def test_block_causality(flex, real_video, changed_block):
    fpb = flex.config.frames_per_block
    other = real_video.clone()
    cut_frames = slice(changed_block * fpb, (changed_block + 1) * fpb)
    other[:, cut_frames] = -other[:, cut_frames]
    fa, fb = pre_quant_features(flex, real_video), pre_quant_features(flex, other)
    cut = changed_block * flex.r
    torch.testing.assert_close(fa[:, :cut], fb[:, :cut], rtol=0, atol=1e-6)
    assert not torch.allclose(fa[:, cut:], fb[:, cut:], atol=1e-3)
    # Decodes of earlier blocks do not change when only later blocks' tokens change.
    la, lb = flex.encode(real_video), flex.encode(other)
    ra = flex.decode(la, steps=2, generator=seeded())
    rb = flex.decode(lb, steps=2, generator=seeded())
    torch.testing.assert_close(ra[:, :changed_block * fpb], rb[:, :changed_block * fpb], rtol=0, atol=1e-6)
    assert not torch.allclose(ra[:, changed_block * fpb:], rb[:, changed_block * fpb:], atol=1e-4)


def test_seeded_sampling_is_deterministic(flex, real_video):
    latents = flex.encode(real_video, keep=4)
    a = flex.decode(latents, steps=4, guidance=1.5, generator=seeded(7))
    b = flex.decode(latents, steps=4, guidance=1.5, generator=seeded(7))
    c = flex.decode(latents, steps=4, guidance=1.5, generator=seeded(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c, atol=1e-4)
    assert not torch.allclose(a, flex.decode(latents, steps=4, guidance=1.0, generator=seeded(7)), atol=1e-4)


def test_one_step_estimate_is_the_eval_forward(flex, real_video):
    """preview() is x0 at t = 1 from seeded noise: the same as the eval-mode forward on one block."""
    block = real_video[:, :flex.config.frames_per_block]
    torch.manual_seed(3)
    with torch.no_grad():
        forward = flex(block, keep=5).recon
    preview = flex.preview(flex.encode(block, keep=5), guidance=1.0, generator=seeded(3))
    torch.testing.assert_close(preview, forward, rtol=1e-5, atol=1e-5)
    assert torch.equal(preview, flex.decode(flex.encode(block, keep=5), steps=1, guidance=1.0, generator=seeded(3)))


def test_streaming_encoder_matches_parallel(flex, real_video):
    patches = flex.patchify(real_video)
    with torch.no_grad():
        parallel, _ = flex.encode_blocks(patches)
    torch.testing.assert_close(flex.encode(real_video, window=None).z, parallel, rtol=0, atol=1e-5)
    torch.testing.assert_close(flex.encode(real_video, window=2).z, parallel, rtol=0, atol=1e-5)
    # A one-block window forgets block 0 when coding block 2: blocks 0 and 1 are as before, 2 moves.
    windowed = flex.encode(real_video, window=1).z
    torch.testing.assert_close(windowed[:, :2 * flex.r], parallel[:, :2 * flex.r], rtol=0, atol=1e-5)


def test_cached_decoder_context_matches_training_layout(flex):
    """Block 1 denoised against block 0's cached clean segment = the training sequence [C0 | N0 | N1]."""
    torch.manual_seed(0)
    d = flex.config.width
    x = torch.randn(1, 3, flex.p, flex.patch_dim)
    regs = torch.randn(1, 3, flex.r, d)
    t = torch.tensor([[0.0, 0.7, 0.4]])
    blocks, clean = torch.tensor([0, 0, 1]), torch.tensor([True, False, False])
    with torch.no_grad():
        parallel, _ = flex.decode_segments(x, regs, t, blocks, clean)
        _, cache = flex.decode_segments(x[:, :1], regs[:, :1], t[:, :1], blocks[:1], clean[:1])
        n0, _ = flex.decode_segments(x[:, 1:2], regs[:, 1:2], t[:, 1:2], blocks[1:2], clean[1:2])
        n1, _ = flex.decode_segments(x[:, 2:], regs[:, 2:], t[:, 2:], blocks[2:], clean[2:], cache)
    torch.testing.assert_close(parallel[:, 1:2], n0, rtol=1e-5, atol=1e-5)  # block 0 sees no context
    torch.testing.assert_close(parallel[:, 2:], n1, rtol=1e-5, atol=1e-5)


def test_encoder_mask_layout():
    mask = encoder_mask(2, 0, patches=2, registers=3, device=torch.device("cpu"))
    assert mask.shape == (10, 10)
    assert mask[0, :2].all() and not mask[0, 2:].any()  # patch 0 of block 0: own patches only
    assert mask[3, :4].tolist() == [True, True, True, True] and not mask[3, 4]  # register 1 sees register 0
    # block 1 patch: patches of blocks 0 and 1 only; block 1 register 0: those and registers 0
    assert mask[6].tolist() == [True, True, False, False, False, True, True, False, False, False]
    assert mask[7].tolist() == [True, True, True, False, False, True, True, True, False, False]


def test_training_step_and_nested_dropout(flex, real_video):
    flex.train()
    torch.manual_seed(0)
    out = flex(real_video)  # keep drawn by nested dropout
    out.loss.backward()
    assert torch.isfinite(out.loss) and flex.enc_in.weight.grad.abs().sum() > 0  # gradients reach the encoder
    pow2 = NestedDropout("pow2", 12)(500, 2, seeded())
    assert set(pow2.unique().tolist()) == {1, 2, 4, 8, 12}
    uniform = NestedDropout("uniform", 12, min_tokens=2)(500, 2, seeded())
    assert set(uniform.unique().tolist()) == set(range(2, 13))
    assert set(NestedDropout("mix", 12)(500, 2, seeded()).unique().tolist()) == set(range(1, 13))


def test_save_and_load(flex, real_video, tmp_path):
    flex.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["family"] == "flextok" and config["name"] == "flextok-micro"
    loaded = FlexTok.from_pretrained(tmp_path / "m")
    latents = loaded.encode(real_video, keep=3)
    assert isinstance(latents, FlexLatents) and torch.equal(latents.indices, flex.encode(real_video, keep=3).indices)
    torch.testing.assert_close(loaded.decode(latents, steps=2, generator=seeded()),
                               flex.decode(latents, steps=2, generator=seeded()), rtol=0, atol=0)
    config["family"] = "elastictok"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ElasticTokError, match="not a FlexTok"):
        FlexTok.from_pretrained(tmp_path / "m")
    config["family"] = "flextok"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    state["enc_in.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ElasticTokError, match="not finite"):
        FlexTok.from_pretrained(tmp_path / "m")


def test_config_validation():
    with pytest.raises(ElasticTokError, match="2\\^18"):
        FlexTokConfig(fsq_levels=(8,) * 7)
    with pytest.raises(ElasticTokError, match="nested_dropout.*min_tokens"):
        FlexTokConfig(nested_dropout="linear", min_tokens=40)
    for name in ("flextok-tiny", "flextok-small"):
        c = FlexTokConfig.from_preset(name)
        assert c.tokens_per_block == c.registers and c.codebook_size <= 2**18
    with pytest.raises(ElasticTokError, match="x0_loss_weight"):
        FlexTokConfig(x0_loss_weight=float("nan"))
    with pytest.raises(ElasticTokError, match="pure_noise_fraction"):
        FlexTokConfig(pure_noise_fraction=1.0)
    with pytest.raises(ElasticTokError, match="prediction 'v' needs width >= patch_dim.*width 32"):
        FlexTokConfig.from_preset("flextok-micro", prediction="v")  # 192-value patches, a 32-wide decoder


@pytest.mark.parametrize("prediction, overrides", [
    ("x0", {}),  # the preset: t ~ logit-normal(0.8, 1); 192-value patches, a 32-wide decoder
    ("v", {"width": 64, "mlp_width": 128, "patch_size": (1, 4, 4), "time_mean": 0.0}),  # 48-value patches
])
def test_trained_as_a_flow_more_euler_steps_land_closer(prediction, overrides, real_video):
    """Either output, the loss regresses the velocity noise - x0 over the whole path (logit-normal t, no
    pure-noise share, cfg dropout on), and its minimiser for one fixed block is that block's velocity field:
    200 steps on one block bring 8 Euler steps far closer to it than the one-step estimate (measured: 3x)."""
    block = real_video[:, :2]
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig.from_preset("flextok-micro", prediction=prediction, **overrides))
    assert model.config.pure_noise_fraction == 0 and model.config.cfg_dropout > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(200):
        loss = model.train()(block, keep=model.r).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    def error(steps: int) -> float:  # the decoded block's MSE, over three noise seeds
        return sum(float(tokenize(model, block, f"tokens:{model.r}", steps=steps, guidance=1.0, seed=seed)[0]
                         .scores[0]) for seed in range(3)) / 3

    assert error(8) < 0.6 * error(1)


def test_the_256_register_preset_builds_trains_and_codes_a_block():
    """flextok-tiny-256 (untrained): 256 registers beside a block's 128 patches, ElasticTok default's 256 tokens."""
    torch.manual_seed(0)
    model = FlexTok(PRESETS["flextok-tiny-256"])
    video = torch.rand(1, 4, 3, 64, 64) * 2 - 1
    assert (model.r, model.u, model.config.tokens_per_block) == (256, 128 + 256, 256)
    out = model.train()(video)  # nested dropout draws the kept counts
    assert out.loss.isfinite() and out.recon.shape == video.shape
    encoded = tokenize(model.eval(), video, "tokens:256", steps=1)[0]
    assert encoded.tokens.shape == (256,) and detokenize(model, encoded).shape == (4, 3, 64, 64)


def test_quant_norm_keeps_fsq_inputs_where_they_have_a_gradient(real_video):
    """A pre-quantisation projection grown 100x puts FSQ's tanh in its flat tails (no gradient reaches the
    encoder there, and each channel sticks at its extreme codes); quant_norm keeps the inputs on its slope."""
    def saturated_share(quant_norm: bool, scale: float) -> float:
        torch.manual_seed(0)
        model = FlexTok(FlexTokConfig.from_preset("flextok-micro", quant_norm=quant_norm))
        with torch.no_grad():
            model.pre_quant.weight.mul_(scale)
        inputs = []
        model.quantizer.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
        model.encode(real_video)
        slope = 1 - torch.tanh(torch.cat(inputs) + model.quantizer.shift).pow(2)
        return (slope < 0.02).float().mean().item()

    assert saturated_share(False, 1.0) < 0.05 and saturated_share(False, 100.0) > 0.5
    assert saturated_share(True, 100.0) < 0.05


def test_configs_saved_before_a_field_existed_load_as_they_were():
    saved = FlexTokConfig.from_preset("flextok-micro").to_dict()
    for key in FlexTokConfig.fields_added_later:
        saved.pop(key)
    earlier = FlexTokConfig.from_dict(saved)
    assert earlier == FlexTokConfig.from_preset("flextok-micro", patch_position="learned", quant_norm=False,
                                                context_from="sample")
    new = FlexTokConfig.from_preset("flextok-micro")  # what new models get
    assert (new.patch_position, new.context_from) == ("sincos", "estimate")
    assert earlier.fingerprint() != FlexTokConfig.from_preset("flextok-micro").fingerprint()


def test_x0_loss_weight_adds_the_estimate_pixel_error(flex, real_video):
    """The extra term is the x0 estimate's pixel MSE, on the same draws of t and noise."""
    flex.train()
    torch.manual_seed(3)
    plain = flex(real_video)
    flex.config.x0_loss_weight = 0.5
    torch.manual_seed(3)
    weighted = flex(real_video)
    assert weighted.loss.item() == pytest.approx(plain.loss.item() + 0.5 * plain.mse.item(), rel=1e-5)


def test_trains_and_resumes_with_the_shared_trainer(photo_folder, tmp_path):
    from safetensors.torch import load_file

    from elastictok.training.config import TrainConfig
    from elastictok.training.loop import train

    def config(out, **overrides):
        return TrainConfig(model="flextok-micro", data=[str(photo_folder)],
                           eval_data=[str(photo_folder / "photo0.jpg")],
                           out_dir=str(out), steps=6, batch_size=2, n_blocks=2, warmup_steps=2, lr=3e-3, eval_every=3,
                           checkpoint_every=3, log_every=1, progress=False, bf16=False, seed=3, **overrides)

    straight = train(config(tmp_path / "a"))
    train(config(tmp_path / "b", max_minutes=0.0))  # stops after its first step, with a checkpoint
    resumed = train(config(tmp_path / "b"), resume=True)
    a, b = (load_file(str(run / "model" / "model.safetensors")) for run in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = FlexTok.from_pretrained(straight / "model")
    assert model.config.window == 1
    assert json.loads((straight / "model" / "config.json").read_text())["family"] == "flextok"
    assert (straight / "eval.jsonl").read_text().count("psnr") == 2


def test_token_mask_drops_any_token(flex, real_video):
    latents = flex.encode(real_video)
    prefix = flex.keep_mask(torch.tensor([[3, 3, 3]]))
    torch.testing.assert_close(flex.decode(latents, steps=2, generator=seeded(), token_mask=prefix),
                               flex.decode(latents, 3, steps=2, generator=seeded()), rtol=0, atol=0)
    holed = flex.keep_mask(torch.tensor([[8, 8, 8]])).clone()
    holed[:, 1] = False  # token 1 of block 0 dropped; a changed code there is ignored
    other = latents.z.clone()
    other[:, 1] = -other[:, 1] + 0.5
    torch.testing.assert_close(flex.decode(latents, steps=2, generator=seeded(), token_mask=holed),
                               flex.decode(other, steps=2, generator=seeded(), token_mask=holed), rtol=0, atol=0)


def test_registry_picks_the_family_by_preset_and_by_saved_config(tmp_path):
    from elastictok.models.registry import config_from_preset, from_pretrained, model_class_for
    from elastictok.training.config import TrainConfig

    config = TrainConfig.from_yaml("configs/flextok-tiny.yaml").model_config()
    assert isinstance(config, FlexTokConfig) and model_class_for(config) is FlexTok
    FlexTok(config_from_preset("flextok-micro")).save_pretrained(tmp_path / "m")
    assert isinstance(from_pretrained(tmp_path / "m"), FlexTok)
    with pytest.raises(ElasticTokError, match="unknown preset"):
        config_from_preset("nope")
