"""Training: masks, schedule, learning on real photos, resumption bit for bit (also after SIGKILL)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from elastictok import ElasticTok, ElasticTokError
from elastictok.training.masks import KeepSampler
from elastictok.training.config import TrainConfig
from elastictok.training.loop import evaluate, lr_factor, train


def micro_config(folder: Path, out: Path, **overrides) -> TrainConfig:
    fields = dict(model="micro", data=[str(folder)], eval_data=[str(folder / "photo0.jpg")], out_dir=str(out),
                  steps=8, batch_size=2, n_blocks=2, warmup_steps=2, lr=3e-3, eval_every=4, checkpoint_every=4,
                  log_every=1, progress=False, seed=3)
    fields.update(overrides)
    return TrainConfig(**fields)


def test_keep_sampler_modes():
    generator = torch.Generator().manual_seed(0)
    elastic = KeepSampler("elastic", 4, 32)(500, 3, generator)
    assert elastic.shape == (500, 3) and elastic.min() == 4 and elastic.max() == 32
    assert torch.equal(KeepSampler("fixed:0.25", 4, 32)(2, 3, generator), torch.full((2, 3), 8))
    assert torch.equal(KeepSampler("full", 4, 32)(1, 2, generator), torch.full((1, 2), 32))
    for bad in ("fixed:2", "fixed:x", "random"):
        with pytest.raises(ElasticTokError):
            KeepSampler(bad, 4, 32)


def test_lr_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(10, TrainConfig(schedule="constant", warmup_steps=10)) == 1.0


def test_long_prefix_distribution_favours_long_prefixes():
    generator = torch.Generator().manual_seed(0)
    uniform = KeepSampler("elastic", 4, 32)(4000, 1, generator).float()
    long = KeepSampler("elastic", 4, 32, distribution="long")(4000, 1, generator)
    assert long.min() >= 4 and long.max() == 32
    assert long.float().mean() > uniform.mean() + 3  # density rising to Mmax: mean 4 + 2/3 * 28, not 4 + 1/2 * 28
    with pytest.raises(ElasticTokError, match="keep distribution"):
        KeepSampler("elastic", 4, 32, distribution="short")


def test_a_time_budget_shapes_the_schedule():
    """With max_minutes, the cosine ends when the minutes do, even if the steps would last longer."""
    cfg = TrainConfig(steps=10_000, warmup_steps=10, min_lr_ratio=0.1, max_minutes=2)
    assert lr_factor(20, cfg, seconds=0) > 0.99
    assert lr_factor(20, cfg, seconds=60) == pytest.approx(0.55, abs=0.01)  # half the budget: half-way down
    assert lr_factor(20, cfg, seconds=120) == pytest.approx(0.1)
    assert lr_factor(20, TrainConfig(steps=10_000, warmup_steps=10), seconds=120) > 0.99  # no budget: steps rule


def test_a_cpu_clock_counts_work_and_not_waiting():
    """``clock: cpu`` budgets this process's CPU time: waiting (as for cores taken by other work) is not
    charged to the run; the wall clock charges it."""
    from elastictok.training.distributed import World
    from elastictok.training.loop import TrainingClock

    world = World()
    wall, cpu = TrainingClock(), TrainingClock(cpu=True)
    time.sleep(0.3)
    assert wall.tick(world) >= 0.3 and cpu.tick(world) < 0.1
    busy_until, deadline = time.process_time() + 0.2, time.monotonic() + 30  # 0.2 s of work, however slow the cores
    while time.process_time() < busy_until and time.monotonic() < deadline:
        sum(range(1000))
    assert cpu.tick(world) >= 0.2
    cpu.restore(100.0)
    assert 100.0 <= cpu.tick(world) < 100.1  # a resumed run continues from its reading
    assert TrainConfig(clock="cpu").clock == "cpu"
    with pytest.raises(ElasticTokError, match="clock"):
        TrainConfig(clock="gpu")


def test_full_length_first_trains_as_the_full_mask(photo_folder, tmp_path):
    """A run wholly in its full-length phase is the full-length run, weight for weight."""
    full = train(micro_config(photo_folder, tmp_path / "full", steps=4, mask="full"))
    first = train(micro_config(photo_folder, tmp_path / "first", steps=4, mask="elastic+full", mask_lengths=2,
                               full_length_first=1.0))
    a, b = _final_weights(full), _final_weights(first)
    assert all(torch.equal(a[k], b[k]) for k in a)
    elastic = _final_weights(train(micro_config(photo_folder, tmp_path / "elastic", steps=4, mask="elastic+full",
                                                mask_lengths=2)))
    assert not all(torch.equal(a[k], elastic[k]) for k in a)


def test_training_learns_on_real_photos(photo_folder, tmp_path):
    cfg = micro_config(photo_folder, tmp_path / "run", steps=60, eval_every=60, checkpoint_every=60, lr=5e-3)
    torch.manual_seed(0)
    untrained = ElasticTok(cfg.model_config())
    run = train(cfg)
    trained = ElasticTok.from_pretrained(run / "model")
    from elastictok.training.datasets import MediaCollection, eval_clips
    held = eval_clips(MediaCollection.load(cfg.eval_data, short_side=32), (32, 32), 2)
    before = evaluate(untrained, held, [1.0], torch.device("cpu"), bf16=False)[1.0]
    after = evaluate(trained, held, [1 / 16, 1.0], torch.device("cpu"), bf16=False)
    assert after[1.0] > before + 3, (before, after)
    assert after[1.0] > after[1 / 16]  # more tokens, better reconstruction
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 61
    assert (run / "checkpoints" / "last.pt").exists() and list((run / "tb").iterdir())


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bit_for_bit(photo_folder, tmp_path, optimizer):
    straight = train(micro_config(photo_folder, tmp_path / "a", ema_decay=0.9, mask="elastic", optimizer=optimizer))
    partial = micro_config(photo_folder, tmp_path / "b", ema_decay=0.9, steps=8, max_minutes=0.0, optimizer=optimizer)
    train(partial)  # stops after its first step, with a checkpoint
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["step"] == 1
    resumed = train(micro_config(photo_folder, tmp_path / "b", ema_decay=0.9, optimizer=optimizer), resume=True)
    a, b = _final_weights(straight), _final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_sigkill(photo_folder, tmp_path):
    """Kill a real training process mid-run, resume it, and get the uninterrupted run's weights."""
    steps = 400
    cfg = micro_config(photo_folder, tmp_path / "killed", steps=steps, checkpoint_every=5, eval_data=[],
                       bf16=True)
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump({k: v for k, v in vars(cfg).items() if k != "betas"}))
    command = [sys.executable, "-m", "elastictok.cli", "train", "--config", str(config_file)]
    checkpoint = tmp_path / "killed" / "checkpoints" / "last.pt"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < killed_at < steps, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "model").exists()
    assert subprocess.run(command + ["--resume"], capture_output=True).returncode == 0
    reference = train(micro_config(photo_folder, tmp_path / "reference", steps=steps, checkpoint_every=5,
                                   eval_data=[], bf16=True))
    a, b = _final_weights(reference), _final_weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_logs_each_held_out_step_once(photo_folder, tmp_path):
    """Killed after it logged step 3's held-out PSNR but before step 3's checkpoint, a run repeats step 3 on
    --resume: eval.jsonl holds each step once, as log.csv does."""
    out = tmp_path / "run"
    fields = dict(steps=4, eval_every=1, checkpoint_every=2, log_every=1)
    train(micro_config(photo_folder, out, stop_at=2, **fields))
    at_step_2 = (out / "checkpoints" / "last.pt").read_bytes()
    train(micro_config(photo_folder, out, stop_at=3, **fields), resume=True)
    (out / "checkpoints" / "last.pt").write_bytes(at_step_2)  # what a kill before step 3's checkpoint leaves
    train(micro_config(photo_folder, out, **fields), resume=True)
    logged = [json.loads(line)["step"] for line in (out / "eval.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]
    assert [row.split(",")[0] for row in (out / "log.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4"]


def test_progressive_training_starts_from_another_run(photo_folder, tmp_path):
    first = train(micro_config(photo_folder, tmp_path / "one-block", n_blocks=1, steps=4))
    longer = micro_config(photo_folder, tmp_path / "three-blocks", n_blocks=3, steps=1, lr=1e-12, warmup_steps=1,
                          init_from=str(first))
    second = train(longer)
    a, b = _final_weights(first), _final_weights(second)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_fixed_length_baseline_and_vae_train(photo_folder, tmp_path):
    for name, overrides in (("fixed", {"mask": "fixed:0.25"}), ("vae", {"model_overrides": {"bottleneck": "vae"}})):
        run = train(micro_config(photo_folder, tmp_path / name, steps=3, **overrides))
        assert (run / "model" / "model.safetensors").exists()


def test_a_finished_run_is_not_trained_over_unasked(photo_folder, tmp_path):
    run = train(micro_config(photo_folder, tmp_path / "run", steps=2, checkpoint_every=1))
    weights = (run / "model" / "model.safetensors").read_bytes()
    with pytest.raises(ElasticTokError, match="holds a run already"):
        train(micro_config(photo_folder, tmp_path / "run", steps=1))
    assert (run / "model" / "model.safetensors").read_bytes() == weights


def test_lpips_term_uses_user_weights(photo_folder, tmp_path):
    from elastictok.metrics.perceptual import LPIPS

    torch.manual_seed(0)
    lpips = LPIPS()
    for p in lpips.parameters():
        p.data.uniform_(0, 0.1)
    state = {k: v for k, v in lpips.state_dict().items()}
    state = {(k.replace("lins.", "lin").replace(".weight", ".model.1.weight") if k.startswith("lins.") else k): v
             for k, v in state.items()}
    torch.save(state, tmp_path / "vgg_lpips.pth")
    loaded = LPIPS.from_file(tmp_path / "vgg_lpips.pth")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loaded(x, x).item() == 0 and loaded(x, -x).item() > 0
    run = train(micro_config(photo_folder, tmp_path / "lp", steps=2, lpips_weights=str(tmp_path / "vgg_lpips.pth")))
    assert float((run / "log.csv").read_text().splitlines()[-1].split(",")[4]) > 0
    with pytest.raises(ElasticTokError, match="LPIPS weights not found"):
        LPIPS.from_file(tmp_path / "absent.pth")


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nbatch_szie: 3\n")
    result = subprocess.run([sys.executable, "-m", "elastictok.cli", "train", "--config", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: unknown training config fields: batch_szie (did you mean batch_size?)"]


def test_shipped_configs_parse():
    configs = sorted((Path(__file__).parent.parent.parent / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        data = yaml.safe_load(path.read_text())
        if "rows" in data:  # a proxy ladder: every row is its base with the row's fields on top
            for row in data["rows"].values():
                assert TrainConfig(**{**data["base"], **row}).model_config().tokens_per_block > 0, path
            continue
        cfg = TrainConfig.from_yaml(path)
        assert cfg.model_config().tokens_per_block > 0, path
        KeepSampler(cfg.mask, cfg.model_config().min_tokens, cfg.model_config().tokens_per_block, cfg.mask_lengths)


def test_trained_models_cache_the_context_they_were_trained_on():
    assert TrainConfig(model="micro", n_blocks=3).model_config().window == 2
    assert TrainConfig(model="micro", n_blocks=1).model_config().window == 1
    assert TrainConfig(model="micro", n_blocks=3, model_overrides={"window": None}).model_config().window is None
