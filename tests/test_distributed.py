"""Multi-process training under torchrun on CPU/gloo: DDP and FSDP2 match one process; checkpoints reshard."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from elastictok.train import TrainConfig, train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(photo_folder, out, **overrides) -> TrainConfig:
    fields = dict(model="micro", data=[str(photo_folder)], out_dir=str(out), steps=3, batch_size=4, n_blocks=2,
                  warmup_steps=1, lr=3e-3, eval_every=10**9, checkpoint_every=2, progress=False, bf16=False, seed=5)
    fields.update(overrides)
    return TrainConfig(**fields)


def torchrun(cfg: TrainConfig, tmp_path, nproc: int, resume: bool = False) -> None:
    path = tmp_path / f"cfg-{nproc}-{resume}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in vars(cfg).items() if k != "betas"}))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "elastictok.cli", "train", "--config", str(path)]
    result = subprocess.run(command + (["--resume"] if resume else []), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_close(a, b, atol=2e-5):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, worst


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_on_the_same_global_batch(photo_folder, tmp_path, mode):
    single = train(config(photo_folder, tmp_path / "single"))
    cfg = config(photo_folder, tmp_path / mode, distributed=mode)
    torchrun(cfg, tmp_path, 2)
    assert_close(weights(single), weights(tmp_path / mode))
    assert (tmp_path / mode / "checkpoints" / "last" / "trainer.json").exists()


def test_checkpoint_from_two_processes_resumes_on_one(photo_folder, tmp_path):
    reference = train(config(photo_folder, tmp_path / "reference", steps=4))
    cfg = config(photo_folder, tmp_path / "resharded", steps=4, max_minutes=0.0)  # stops after step 1
    torchrun(cfg, tmp_path, 2)
    assert '"step": 1' in (tmp_path / "resharded" / "checkpoints" / "last" / "trainer.json").read_text()
    cfg.max_minutes = None
    torchrun(cfg, tmp_path, 1, resume=True)
    assert_close(weights(reference), weights(tmp_path / "resharded"))


def test_sequence_parallel_training_matches_one_process(photo_folder, tmp_path):
    """Two ranks each hold half of every sequence (a block straddles the boundary): same weights as one."""
    single = train(config(photo_folder, tmp_path / "single", n_blocks=3, batch_size=2))
    cfg = config(photo_folder, tmp_path / "sp", n_blocks=3, batch_size=2, sequence_parallel=True)
    torchrun(cfg, tmp_path, 2)
    assert_close(weights(single), weights(tmp_path / "sp"), atol=5e-5)
