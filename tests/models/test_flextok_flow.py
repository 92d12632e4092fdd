"""FlexTok's flow objective, the parts a sampling decoder depends on: training times, the velocity-space
loss, the shifted Euler grid, register dropout for guidance, and the run config that trains them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from elastictok import ElasticTokError
from elastictok.models.flextok import FlexTok, FlexTokConfig

ROOT = Path(__file__).resolve().parents[2]
FLOW_CONFIG = ROOT / "configs" / "flextok-tiny-flow.yaml"
SHIPPED = ROOT / "src" / "elastictok" / "weights" / "flextok"
ONE_STEP_CONFIG = ROOT / "tests" / "fixtures" / "flextok-one-step" / "config.json"  # saved before sample_shift


def micro(**overrides) -> FlexTok:
    torch.manual_seed(0)
    return FlexTok(FlexTokConfig.from_preset("flextok-micro", **overrides))


def test_training_times_are_logit_normal_with_the_configured_mean_spread_and_pure_noise_share():
    torch.manual_seed(0)
    t = micro(time_mean=0.7, time_std=0.5).training_times(400, 500, torch.device("cpu")).double()
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.7, abs=0.01) and logit.std().item() == pytest.approx(0.5, abs=0.01)
    normal = torch.distributions.Normal(0.7, 0.5)  # its deciles, against the draws' deciles
    levels = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    torch.testing.assert_close(torch.quantile(logit, levels), normal.icdf(levels), rtol=0, atol=0.02)
    assert (t == 1).sum() == 0 and 0 < t.min() and t.max() < 1
    torch.manual_seed(0)
    shared = micro(pure_noise_fraction=0.3).training_times(400, 500, torch.device("cpu"))
    assert (shared == 1).float().mean().item() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("prediction, overrides", [
    ("x0", {}), ("v", {"width": 64, "mlp_width": 128, "patch_size": (1, 4, 4)})])
def test_flow_loss_is_the_velocity_error_and_zero_for_a_perfect_prediction(prediction, overrides):
    model = micro(prediction=prediction, **overrides)
    torch.manual_seed(1)
    x0, noise = torch.rand(2, 1, 4, model.patch_dim) * 2 - 1, torch.randn(2, 1, 4, model.patch_dim)
    t = torch.tensor([0.3, 0.9]).view(2, 1, 1, 1)  # both above t_min
    x_t, velocity = (1 - t) * x0 + t * noise, noise - x0
    perfect = x0 if prediction == "x0" else velocity
    loss, x0_hat = model.flow_loss(perfect, x_t=x_t, x0=x0, noise=noise, t=t)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-6)
    off = perfect + 0.1 * torch.randn_like(perfect)
    implied = (x_t - off) / t if prediction == "x0" else off  # the velocity each output stands for
    loss, _ = model.flow_loss(off, x_t=x_t, x0=x0, noise=noise, t=t)
    assert loss.item() == pytest.approx((implied - velocity).pow(2).mean().item(), rel=1e-5)


def test_x0_flow_loss_caps_the_velocity_weight_at_one_over_t_min():
    model = micro(t_min=0.05)
    torch.manual_seed(2)
    x0, noise, error = (torch.randn(1, 1, 4, model.patch_dim) for _ in range(3))
    t = torch.full((1, 1, 1, 1), 0.01)
    loss, _ = model.flow_loss(x0 + error, x_t=(1 - t) * x0 + t * noise, x0=x0, noise=noise, t=t)
    assert loss.item() == pytest.approx((error / 0.05).pow(2).mean().item(), rel=1e-5)


def test_sampling_grid_shift_moves_the_logit_by_log_s_and_one_leaves_it_uniform():
    steps = 10
    uniform = micro().sampling_times(steps)
    assert torch.equal(uniform, torch.linspace(1.0, 0.0, steps + 1))  # every model saved before the field
    shifted = micro(sample_shift=3.0).sampling_times(steps).double()
    assert shifted[0] == 1 and shifted[-1] == 0 and bool((shifted.diff() < 0).all())
    inner_u, inner_t = uniform[1:-1].double(), shifted[1:-1]
    torch.testing.assert_close(torch.logit(inner_t), torch.logit(inner_u) + math.log(3.0), rtol=0, atol=1e-5)
    with pytest.raises(ElasticTokError, match="sample_shift must be > 0"):
        FlexTokConfig.from_preset("flextok-micro", sample_shift=0.0)


def test_the_shift_changes_many_step_samples_and_not_the_one_step_estimate(real_video):
    plain = micro()
    with torch.no_grad():
        for p in plain.parameters():  # open adaLN-zero's gates: an untouched decoder outputs zeros at any t
            p.add_(torch.randn_like(p) * 0.1)
    shifted = FlexTok(FlexTokConfig.from_preset("flextok-micro", sample_shift=3.0))
    shifted.load_state_dict(plain.state_dict())
    latents = plain.eval().encode(real_video[:, :2])

    def decode(model: FlexTok, steps: int) -> torch.Tensor:
        return model.eval().decode(latents, steps=steps, guidance=1.0, generator=torch.Generator().manual_seed(0))

    assert torch.equal(decode(plain, 1), decode(shifted, 1))
    assert (decode(plain, 4) - decode(shifted, 4)).abs().max() > 1e-3


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_the_next_block_reads_the_one_step_estimate_whatever_the_steps(real_video, guidance):
    """``sample_block`` returns its sample and, as the next block's context, the (guided) one-step estimate from
    the same noise: a many-step sample's invented detail is not copied forward. At one step the two are one."""
    model = micro()
    with torch.no_grad():
        for p in model.parameters():  # open adaLN-zero's gates, as above
            p.add_(torch.randn_like(p) * 0.1)
        model.eval()
        latents = model.encode(real_video[:, :2])
        registers = model.register_tokens(latents.z[:, :model.r], latents.keep[:, :1])
        noise = torch.randn(1, 1, model.p, model.patch_dim, generator=torch.Generator().manual_seed(0))
        sample, context = model.sample_block(registers, 0, None, 6, guidance, None, noise=noise)
        one_step, same = model.sample_block(registers, 0, None, 1, guidance, None, noise=noise)
    torch.testing.assert_close(context, one_step, rtol=0, atol=1e-5)
    torch.testing.assert_close(same, one_step, rtol=0, atol=1e-5)
    assert (sample - one_step).abs().max() > 1e-3
    older = FlexTok(FlexTokConfig.from_preset("flextok-micro", context_from="sample"))  # as models saved before it
    older.load_state_dict(model.state_dict())
    with torch.no_grad():
        older_sample, older_context = older.eval().sample_block(registers, 0, None, 6, guidance, None, noise=noise)
    assert torch.equal(older_sample, sample) and torch.equal(older_context, sample)


def test_a_model_saved_before_context_from_keeps_its_context_and_fingerprint():
    """Token files of models saved before the field decode as they were scored: the sample stays the context,
    and the fingerprint the files carry is unchanged; a model that reads estimates carries another."""
    shipped = json.loads(ONE_STEP_CONFIG.read_text())
    assert "context_from" not in shipped
    config = FlexTokConfig.from_dict(shipped)
    assert config.context_from == "sample"
    assert config.fingerprint() == FlexTokConfig.from_dict({**shipped, "context_from": "sample"}).fingerprint()
    assert config.fingerprint() != FlexTokConfig.from_dict({**shipped, "context_from": "estimate"}).fingerprint()
    with pytest.raises(ElasticTokError, match="context_from"):
        FlexTokConfig.from_dict({**shipped, "context_from": "previous"})


def test_training_drops_every_register_of_a_cfg_dropout_share_of_blocks(monkeypatch, real_video):
    model = micro(cfg_dropout=0.4).train()
    seen = []
    original = FlexTok.register_tokens

    def recording(self, z, keep):
        seen.append(keep.clone())
        return original(self, z, keep)

    monkeypatch.setattr(FlexTok, "register_tokens", recording)
    torch.manual_seed(0)
    video = real_video[:, :2].expand(512, -1, -1, -1, -1)  # 512 one-block samples
    model(video, keep=model.r)
    kept = seen[-1]  # the noisy blocks' registers (one block: the only call)
    assert set(kept.unique().tolist()) == {0, model.r}
    assert (kept == 0).float().mean().item() == pytest.approx(0.4, abs=0.07)


def test_the_flow_run_config_starts_from_the_bundled_weights_with_the_sampling_objective():
    from elastictok.training.config import TrainConfig
    from elastictok.training.loop import load_init_weights

    cfg = TrainConfig.from_yaml(FLOW_CONFIG)
    c = cfg.model_config()
    assert (c.prediction, c.pure_noise_fraction, c.sample_shift) == ("x0", 0.0, 2.0) and c.cfg_dropout > 0
    assert c.time_mean == pytest.approx(math.log(c.sample_shift), abs=0.01)  # training and sampling agree
    assert not cfg.bf16 and cfg.max_minutes == 35 and cfg.schedule == "cosine"
    assert Path(cfg.init_from).resolve() == SHIPPED
    model = FlexTok(c)
    load_init_weights(model, str(ROOT / cfg.init_from))  # same shapes as the bundled model, or this raises
    assert model.out_proj.weight.abs().sum() > 0  # zero when built, so the bundled weights are in


def test_one_training_step_on_the_flow_objective(photo_folder, tmp_path):
    """The run config's objective on the micro preset, through the shared trainer: it trains and saves."""
    import yaml

    from elastictok.training.config import TrainConfig
    from elastictok.training.loop import train

    objective = yaml.safe_load(FLOW_CONFIG.read_text())["model_overrides"]
    cfg = TrainConfig(model="flextok-micro", model_overrides=objective, data=[str(photo_folder)], out_dir=str(
        tmp_path / "run"), steps=2, batch_size=2, n_blocks=2, warmup_steps=1, lr=1e-3, log_every=1, progress=False,
        bf16=False)
    before = micro(**objective).state_dict()
    run = train(cfg)
    after = FlexTok.from_pretrained(run / "model")
    assert after.config.sample_shift == 2.0 and after.config.pure_noise_fraction == 0.0
    assert any(not torch.equal(before[k], v) for k, v in after.state_dict().items())
    with (run / "log.csv").open() as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)


def test_a_config_saved_without_sample_shift_samples_on_the_uniform_grid():
    """Models saved before the field load with the grid they were sampled on; a shifted model's token files
    carry another fingerprint, so they are not decoded on the wrong grid."""
    shipped = json.loads(ONE_STEP_CONFIG.read_text())
    assert "sample_shift" not in shipped
    model = FlexTok(FlexTokConfig.from_dict(shipped))
    assert torch.equal(model.sampling_times(25), torch.linspace(1.0, 0.0, 26))
    shifted = FlexTokConfig.from_dict({**shipped, "sample_shift": 2.0})
    assert shifted.fingerprint() != model.config.fingerprint()
