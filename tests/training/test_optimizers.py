"""The optimiser choice: Muon on the transformer blocks' matrices, AdamW on the rest, under one schedule."""

from __future__ import annotations

import re

import pytest
import torch
import torch.distributed as dist

from conftest import free_port

from elastictok import ElasticTokError
from elastictok.models.registry import model_class_for
from elastictok.training.config import TrainConfig
from elastictok.training.loop import train
from elastictok.training.optimizers import build_optimizer

# The attention and MLP projections (and FlexTok's AdaLN modulation) inside each transformer block, by name.
HIDDEN = {"micro": r"(encoder|decoder)\.blocks\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])\.weight",
          "flextok-micro": r"(encoder|decoder)\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123]|modulation\.\w+)\.weight"}


def tiny_model(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = TrainConfig(model=preset).model_config()
    return model_class_for(config)(config)


def groups_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[set[str], dict]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [({names[id(p)] for p in group["params"]}, group) for group in optimizer.param_groups]


@pytest.mark.parametrize("preset", sorted(HIDDEN))
def test_muon_takes_the_block_matrices_and_adamw_the_rest(preset):
    model = tiny_model(preset)
    optimizer = build_optimizer(model, TrainConfig(model=preset, optimizer="muon", weight_decay=0.01))
    groups = groups_by_name(model, optimizer)
    muon = set().union(*(names for names, group in groups if "momentum" in group))  # Muon's own group field
    decay = set().union(*(names for names, group in groups if "betas" in group and group["weight_decay"] == 0.01))
    no_decay = set().union(*(names for names, group in groups if "betas" in group and group["weight_decay"] == 0))
    everything = {name for name, _ in model.named_parameters()}
    assert muon == {name for name in everything if re.fullmatch(HIDDEN[preset], name)}
    assert len(muon) >= 7 and {"out_proj.weight", "pre_quant.weight", "post_quant.weight"} <= decay
    shapes = dict((name, p.dim()) for name, p in model.named_parameters())
    assert all(shapes[name] >= 2 for name in decay) and all(shapes[name] < 2 for name in no_decay)
    assert muon | decay | no_decay == everything and len(muon) + len(decay) + len(no_decay) == len(everything)


def test_adamw_stays_the_default_with_its_two_groups():
    model = tiny_model("micro")
    optimizer = build_optimizer(model, TrainConfig(model="micro"))
    assert type(optimizer) is torch.optim.AdamW
    assert [group["weight_decay"] for group in optimizer.param_groups] == [TrainConfig().weight_decay, 0.0]


def test_muon_lowers_the_loss_and_moves_both_kinds_of_weights():
    model = tiny_model("micro")
    optimizer = build_optimizer(model, TrainConfig(model="micro", optimizer="muon", lr=3e-3))
    video = torch.rand(2, 2 * model.config.frames_per_block, 3, *model.config.resolution,
                       generator=torch.Generator().manual_seed(1))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = []
    for _ in range(12):
        loss = model(video).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert "encoder.blocks.0.attention.wq.weight" in moved and "out_proj.weight" in moved and "is_kept_embed" in moved


def test_the_schedule_drives_muon_and_adamw_alike():
    """A zero learning-rate factor freezes every weight: the scheduler reaches Muon's group as well as AdamW's."""
    model = tiny_model("micro")
    optimizer = build_optimizer(model, TrainConfig(model="micro", optimizer="muon", weight_decay=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(torch.rand(1, 2 * model.config.frames_per_block, 3, *model.config.resolution)).loss.backward()
    optimizer.step()
    scheduler.step()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_an_unknown_optimizer_is_refused_in_one_line():
    with pytest.raises(ElasticTokError, match="optimizer must be one of adamw, muon, got 'sgd'") as info:
        TrainConfig(optimizer="sgd")
    assert "\n" not in str(info.value)


def run_config(photo_folder, out, **overrides) -> TrainConfig:
    fields = dict(model="micro", data=[str(photo_folder)], out_dir=str(out), steps=4, batch_size=2, n_blocks=2,
                  warmup_steps=1, eval_every=10**9, progress=False, bf16=False, max_minutes=0.0)
    return TrainConfig(**{**fields, **overrides})


def test_a_checkpoint_resumes_only_with_its_own_optimizer(photo_folder, tmp_path):
    train(run_config(photo_folder, tmp_path / "run"))  # stops after its first step, with an AdamW checkpoint
    with pytest.raises(ElasticTokError, match="written by a run with optimizer: adamw; not resuming it with "
                                              "optimizer: muon") as info:
        train(run_config(photo_folder, tmp_path / "run", optimizer="muon"), resume=True)
    assert "\n" not in str(info.value)


def test_a_checkpoint_resumes_only_on_its_own_clock(photo_folder, tmp_path):
    """Wall seconds are not CPU seconds: a run budgeted on one clock does not resume on the other."""
    train(run_config(photo_folder, tmp_path / "run"))
    with pytest.raises(ElasticTokError, match="written by a run with clock: wall; not resuming it with "
                                              "clock: cpu") as info:
        train(run_config(photo_folder, tmp_path / "run", clock="cpu"), resume=True)
    assert "\n" not in str(info.value)


def test_muon_needs_a_torch_that_has_it(photo_folder, tmp_path, monkeypatch):
    """torch before 2.9 has no torch.optim.Muon: one line before the run starts, not an AttributeError."""
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ElasticTokError, match=r"optimizer: muon needs torch 2\.9 or later") as info:
        train(run_config(photo_folder, tmp_path / "run", optimizer="muon"))
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def test_muon_is_refused_under_a_process_group(photo_folder, tmp_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(ElasticTokError, match="muon trains in one process only"):
            train(run_config(photo_folder, tmp_path / "run", optimizer="muon"))
    finally:
        dist.destroy_process_group()
    assert not (tmp_path / "run").exists()
