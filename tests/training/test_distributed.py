"""Multi-process training under torchrun on CPU/gloo: DDP and FSDP2 match one process; checkpoints reshard."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import free_port

from elastictok.training.config import TrainConfig
from elastictok.training.loop import train


def config(photo_folder, out, **overrides) -> TrainConfig:
    fields = dict(model="micro", data=[str(photo_folder)], out_dir=str(out), steps=3, batch_size=4, n_blocks=2,
                  warmup_steps=1, lr=3e-3, eval_every=10**9, checkpoint_every=2, progress=False, bf16=False, seed=5)
    fields.update(overrides)
    return TrainConfig(**fields)


def torchrun(cfg: TrainConfig, tmp_path, nproc: int, resume: bool = False) -> str:
    """Train ``cfg`` under torchrun; returns what it printed to stderr."""
    path = tmp_path / f"cfg-{nproc}-{resume}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in vars(cfg).items() if k != "betas"}))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "elastictok.cli", "train", "--config", str(path)]
    result = subprocess.run(command + (["--resume"] if resume else []), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


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


def test_a_save_stopped_between_its_renames_resumes_from_the_newest_checkpoint(photo_folder, tmp_path):
    """What rank 0 leaves when stopped after moving DIR aside and before moving DIR.tmp in: no DIR."""
    reference = train(config(photo_folder, tmp_path / "reference", steps=4))
    cfg = config(photo_folder, tmp_path / "stopped", steps=4, max_minutes=0.0)  # stops after step 1
    torchrun(cfg, tmp_path, 2)
    checkpoints = tmp_path / "stopped" / "checkpoints"
    (checkpoints / "last").rename(checkpoints / "last.tmp")  # the newest save, not yet moved in
    shutil.copytree(checkpoints / "last.tmp", checkpoints / "last.old")  # the one it was replacing
    (checkpoints / "last.old" / "trainer.json").write_text('{"step": 0}')
    cfg.max_minutes = None
    assert "resuming from step 1" in torchrun(cfg, tmp_path, 2, resume=True)
    assert_close(weights(reference), weights(tmp_path / "stopped"))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last"]


def test_sequence_parallel_training_matches_one_process(photo_folder, tmp_path):
    """Two ranks each hold half of every sequence (a block straddles the boundary): same weights as one."""
    single = train(config(photo_folder, tmp_path / "single", n_blocks=3, batch_size=2))
    cfg = config(photo_folder, tmp_path / "sp", n_blocks=3, batch_size=2, sequence_parallel=True)
    torchrun(cfg, tmp_path, 2)
    assert_close(weights(single), weights(tmp_path / "sp"), atol=5e-5)


def _members(folder) -> dict[str, bytes]:
    import tarfile
    out = {}
    for shard in sorted(folder.glob("tokens-*.tar")):
        with tarfile.open(shard) as tar:
            out.update({m.name: tar.extractfile(m).read() for m in tar})
    return out


def test_a_dead_worker_leaves_its_shard_for_the_rerun(trained_micro, photo_folder, tmp_path):
    """Inputs a dead worker never tokenized are not recorded as failed: the shard stays unfinished."""
    from tqdm import tqdm

    from elastictok.training.corpus import _write_shard, tokenize_corpus
    from elastictok.tokenization.workers import WorkerDiedError

    members = sorted(photo_folder.glob("photo*.jpg"))[:2]
    first = trained_micro.tokenize(str(members[0]), "mse:0.2")
    results = iter([first, WorkerDiedError(f"{members[1]}: not tokenized, a worker process died")])
    with pytest.raises(WorkerDiedError):
        _write_shard(trained_micro, tmp_path, 0, members, results, None, tqdm(disable=True), run={})
    assert list(tmp_path.iterdir()) == []
    summary = tokenize_corpus(trained_micro, members, tmp_path, "mse:0.2", shard_size=2, progress=False)
    assert (summary.shards_written, summary.failed, summary.inputs) == (1, 0, 2)


def test_tokenize_corpus_plain_torchrun_and_resume(trained_micro, photo_folder, tmp_path):
    from elastictok.training.corpus import tokenize_corpus
    from elastictok.tokenization.targets import parse_target
    from elastictok.tokenization.tokenfile import parse_etok

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in photo_folder.iterdir():
        (corpus / f.name).write_bytes(f.read_bytes())
    (corpus / "broken.mp4").write_text("not a video")
    target = parse_target("mse:0.2")
    summary = tokenize_corpus(trained_micro, [corpus], tmp_path / "plain", target, shard_size=2, progress=False)
    assert (summary.inputs, summary.failed, summary.shards_written) == (5, 1, 3)
    assert summary.blocks == 12 + 3 and 0 < summary.tokens <= summary.max_tokens
    members = _members(tmp_path / "plain")
    etoks = {k: parse_etok(v, k) for k, v in members.items() if k.endswith(".etok")}
    assert len(etoks) == 4 and sum(int(e.counts.sum()) for e in etoks.values()) == summary.tokens

    (tmp_path / "plain" / "tokens-000001.tar").unlink()  # as if the run had died while writing it
    again = tokenize_corpus(trained_micro, [corpus], tmp_path / "plain", target, shard_size=2, progress=False)
    assert (again.shards_skipped, again.shards_written, again.tokens) == (2, 1, summary.tokens)

    model_dir = tmp_path / "model"
    trained_micro.save_pretrained(model_dir)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "elastictok.cli", "tokenize-corpus", str(corpus),
               str(tmp_path / "ranked"), "--model", str(model_dir), "--threshold", "mse:0.2", "--shard-size", "2",
               "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{summary.tokens} tokens" in result.stdout
    pooled = subprocess.run([sys.executable, "-m", "elastictok.cli", "tokenize-corpus", str(corpus),
                             str(tmp_path / "pooled"), "--model", str(model_dir), "--threshold", "mse:0.2",
                             "--shard-size", "2", "--no-progress", "--workers", "2"],
                            capture_output=True, text=True, timeout=120)
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    assert f"{summary.tokens} tokens" in pooled.stdout
    for other in (_members(tmp_path / "ranked"), _members(tmp_path / "pooled")):
        assert other.keys() == members.keys()
        for key, payload in members.items():  # safetensors orders header metadata arbitrarily: compare contents
            if key.endswith(".etok"):
                a, b = parse_etok(payload), parse_etok(other[key])
                assert torch.equal(a.counts, b.counts) and torch.equal(a.tokens, b.tokens) and a.info == b.info
            else:
                assert payload == other[key]
