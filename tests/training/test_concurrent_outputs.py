"""Output folders of ``data shard`` and ``tokenize-corpus``: a full disk leaves nothing behind and names the file
it could not write; a second run into a DST that another run is writing is refused in one line, and no run
reports success for data that is gone. Real processes, real files, real file-size limits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from elastictok import ElasticTokError
from elastictok.training.shards import LOCK_NAME, OutputFolder, build_shards, iter_shard, list_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
posix_only = pytest.mark.skipif(os.name != "posix", reason="file-size limits, SIGSTOP and flock are POSIX")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "elastictok.cli", *map(str, args), "--no-progress"]


def _limit_file_size(limit: int):
    """preexec_fn: files written by the child may not grow past ``limit`` bytes (a write past it fails with
    EFBIG, as a full disk fails with ENOSPC), instead of the child being killed by SIGXFSZ."""
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory) -> Path:
    from elastictok import ElasticTok, ElasticTokConfig

    folder = tmp_path_factory.mktemp("micro")
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(folder)
    return folder


# ---- a full disk ------------------------------------------------------------------------------------------------
@posix_only
def test_a_shard_that_cannot_be_written_is_named_and_nothing_is_left(photo_folder, tmp_path):
    before = _tree(tmp_path)
    result = subprocess.run(_cli("data", "shard", photo_folder / "photo0.jpg", tmp_path / "new" / "ds"), env=ENV,
                            capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size(8192))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {tmp_path / 'new' / 'ds' / 'shard-000000.tar'}: cannot write (File too large)"]
    assert _tree(tmp_path) == before  # no temporary shard, no lock file, neither folder the run made


@posix_only
def test_a_token_shard_that_cannot_be_written_leaves_no_folder(photo_folder, micro_dir, tmp_path):
    before = _tree(tmp_path)
    result = subprocess.run(_cli("tokenize-corpus", photo_folder / "photo0.jpg", tmp_path / "new" / "tc", "--model",
                                 micro_dir, "--tokens", "4"),
                            env=ENV, capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size(4096))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()  # the photo's resize is told as it happens, the error last
    assert lines[-1] == f"error: {tmp_path / 'new' / 'tc' / 'tokens-000000.tar'}: cannot write (File too large)"
    assert all(line.startswith(("WARNING: ", "INFO: ")) for line in lines[:-1]), result.stderr
    assert _tree(tmp_path) == before


@posix_only
def test_a_full_tmpfs_leaves_nothing(photo_folder, tmp_path):
    """The reported case itself: a 64 KiB tmpfs, nearly full (needs the right to mount; skipped otherwise)."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (disk / "filler").write_bytes(bytes(56000))
        result = subprocess.run(_cli("data", "shard", photo_folder / "photo0.jpg", disk / "ds"), env=ENV,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: {disk / 'ds' / 'shard-000000.tar'}: cannot write (No space left on device)"]
        assert _tree(disk) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---- two runs into one DST -------------------------------------------------------------------------------------
def _stopped_while_holding(command: list[str], destination: Path) -> subprocess.Popen:
    """Start ``command`` and stop it (SIGSTOP) as soon as it holds ``destination``'s lock."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = destination / LOCK_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if lock.read_text().strip() == str(process.pid):
                process.send_signal(signal.SIGSTOP)
                return process
        except OSError:
            pass
        time.sleep(0.002)
    out, err = process.communicate(timeout=120)
    pytest.fail(f"the run never held {lock} (exit {process.returncode}): {out} {err}")


def _refused(command: list[str], destination: Path, holder: int) -> None:
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: {destination}: being written by another run (pid {holder}); wait for it to end, or name another DST"]


@posix_only
def test_a_second_shard_run_into_a_dst_being_written_is_refused(photo_folder, tmp_path):
    destination = tmp_path / "ds"
    first = _stopped_while_holding(_cli("data", "shard", *[photo_folder] * 3, destination, "--shard-size", "2",
                                        "--clip-frames", "8"), destination)
    try:
        _refused(_cli("data", "shard", photo_folder / "photo1.jpg", destination), destination, first.pid)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "wrote 9 shards" in out and "9 video clips, 9 images" in out
    shards = list_shards([destination])
    assert len(shards) == 9 and sum(len(list(iter_shard(s))) for s in shards) == 18
    assert [p.name for p in destination.iterdir() if p.suffix != ".tar"] == []  # no lock file, no temporary


@posix_only
def test_two_shard_runs_at_once_lose_nothing(photo_folder, tmp_path):
    """The reported race: two runs started together into one new DST. Whichever way they meet, every run that
    reports success has all its samples there, whole; the other is refused in one line."""
    destination = tmp_path / "c1" / "ds"
    sets = [[photo_folder / f"photo{i}.jpg" for i in range(3)], [photo_folder / "pan.mp4"]]
    runs = [subprocess.Popen(_cli("data", "shard", *inputs, destination, "--clip-frames", "8", "--shard-size", "1000"),
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for inputs in sets]
    results = [(run.pid, *run.communicate(timeout=120), run.returncode) for run in runs]
    promised = 0
    for pid, out, err, code in results:
        if code == 0:
            clips, images = map(int, re.search(r"(\d+) video clips, (\d+) images", out).groups())
            promised += clips + images
        else:
            other = next(p for p, *_ in results if p != pid)
            assert code == 2 and err.strip().splitlines() == [
                f"error: {destination}: being written by another run (pid {other}); wait for it to end, or name "
                "another DST"]
    assert promised in (3, 6)  # one run, or both one after the other
    samples = [m.name for s in list_shards([destination]) for m in tarfile.open(s) if m.name.endswith((".jpg", ".mp4"))]
    assert len(samples) == promised
    assert [p.name for p in destination.iterdir() if p.suffix != ".tar"] == []


@posix_only
def test_a_second_tokenize_corpus_run_into_a_dst_being_written_is_refused(photo_folder, micro_dir, tmp_path):
    destination = tmp_path / "tc"
    mine = [photo_folder / "photo0.jpg", photo_folder / "photo1.jpg"]
    first = _stopped_while_holding(_cli("tokenize-corpus", *mine, destination, "--model", micro_dir, "--tokens", "4"),
                                   destination)
    try:
        _refused(_cli("tokenize-corpus", photo_folder / "photo2.jpg", destination, "--model", micro_dir, "--tokens",
                      "4"), destination, first.pid)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "2 inputs" in out and "1 written" in out
    assert sorted(p.name for p in destination.iterdir()) == ["tokens-000000.json", "tokens-000000.tar"]
    with tarfile.open(destination / "tokens-000000.tar") as tar:
        assert sorted(m.name for m in tar) == ["000000-00000-photo0.etok", "000000-00000-photo0.json",
                                               "000000-00001-photo1.etok", "000000-00001-photo1.json"]


# ---- the lock itself -------------------------------------------------------------------------------------------
@posix_only
def test_a_held_dst_is_refused_and_a_stale_lock_file_is_not(photo_folder, tmp_path):
    destination = tmp_path / "ds"
    with OutputFolder(destination):  # another holder (a lock is per open file, so one process shows it)
        with pytest.raises(ElasticTokError, match=rf"being written by another run \(pid {os.getpid()}\)"):
            build_shards([photo_folder / "photo0.jpg"], destination, progress=False)
        assert (destination / LOCK_NAME).exists() and len(list(destination.iterdir())) == 1
    assert not destination.exists()  # the holder made it and left it empty
    destination.mkdir()
    (destination / LOCK_NAME).write_text("999999\n")  # left by a killed run: its lock went with it
    summary = build_shards([photo_folder / "photo0.jpg"], destination, progress=False)
    assert summary.shards == 1 and [p.name for p in destination.iterdir()] == ["shard-000000.tar"]
