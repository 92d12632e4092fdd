"""Worker pools: threads per worker never oversubscribe the cores; a bad file does not stop the others;
workers' log lines and warnings are printed as the parent's; Ctrl-C or SIGTERM stops every worker at once,
cleanly."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import elastictok
from elastictok import ElasticTok, ElasticTokConfig, ElasticTokError
from elastictok.tokenization.targets import TokenCount
from elastictok.tokenization.workers import TokenizerPool
from elastictok.utils.cores import threads_per_worker


def test_threads_per_worker_never_exceeds_the_cores():
    for cores in (1, 2, 3, 8, 16):
        for workers in range(1, 20):
            threads = threads_per_worker(workers, cores)
            assert threads >= 1 and (workers * threads <= cores or threads == 1)
    with pytest.raises(ElasticTokError):
        threads_per_worker(0, 4)


def test_a_pool_never_starts_more_workers_than_cores(tmp_path):
    """Three workers asked of one core: one worker, here, on that core (three would run three threads on it)."""
    torch.manual_seed(0)
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(tmp_path / "micro")
    Image.new("RGB", (40, 40), (60, 20, 200)).save(tmp_path / "img.png")
    with TokenizerPool(tmp_path / "micro", 3, cores=1, target=TokenCount(4)) as pool:
        assert (pool.workers, pool.threads) == (1, 1)
        [result] = pool.map([tmp_path / "img.png"])
    assert result.counts.tolist() == [4]


@pytest.mark.parametrize("workers", [1, 2])
def test_pool_tokenizes_in_order_and_reports_bad_files(tmp_path, workers):
    torch.manual_seed(0)
    model_dir = tmp_path / "micro"
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(model_dir)
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 20, 200)).save(tmp_path / f"img{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    files = [tmp_path / "img0.png", tmp_path / "bad.png", tmp_path / "img1.png", tmp_path / "img2.png"]
    threads = torch.get_num_threads()
    with TokenizerPool(model_dir, workers, cores=2, target=TokenCount(4)) as pool:
        assert pool.threads == 2 // workers
        results = list(pool.map(files))
    assert torch.get_num_threads() == threads  # an in-process pool restores the caller's threads
    assert isinstance(results[1], ElasticTokError) and "bad.png" in str(results[1])
    assert [r.info.source for r in results if not isinstance(r, Exception)] == [str(files[i]) for i in (0, 2, 3)]


def test_workers_log_and_warn_as_one_process_does(tmp_path):
    """A worker's log lines (resized) and library warnings (PIL's corrupt EXIF) are printed by the parent, one
    line each in its format, in input order: two workers print what one does."""
    torch.manual_seed(0)
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(tmp_path / "micro")
    for i in range(2):
        Image.new("RGB", (40, 40), (60 * i, 20, 200)).save(tmp_path / f"img{i}.png")
    (tmp_path / "text.tif").write_bytes(b"II*\0hello\n")  # PIL warns "Corrupt EXIF data", then cannot read it
    inputs = [tmp_path / "img0.png", tmp_path / "text.tif", tmp_path / "img1.png"]
    one, two = (subprocess.run([sys.executable, "-m", "elastictok.cli", "encode", *map(str, inputs), "-o",
                                str(tmp_path / f"out{workers}"), "--model", str(tmp_path / "micro"), "--tokens", "32",
                                "--workers", str(workers), "--no-progress"], capture_output=True, text=True, timeout=120)
                for workers in (1, 2))
    assert one.returncode == two.returncode == 2
    assert "INFO: img0.png" in one.stderr and "WARNING: Corrupt EXIF data" in one.stderr, one.stderr
    assert two.stderr == one.stderr, two.stderr


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_pool_stops_its_workers_at_once(tmp_path, how):
    """Ctrl-C in a terminal signals the parent and its workers; SIGTERM (a killed job) only the parent."""
    from crash_kill import interrupt

    clip = Path(elastictok.__file__).parent / "assets" / "street.mp4"
    inputs = [shutil.copy(clip, tmp_path / f"clip{i}.mp4") for i in range(12)]
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "elastictok.cli", "encode", *map(str, inputs), "-o", str(out),
                            "--workers", "2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("*.etok")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # interrupt once the first file is written: the workers are busy with the next
        assert run.poll() is None, "the encode ended before it could be interrupted"
        stderr, seconds = interrupt(run, how)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # the whole session: the parent and any worker left
    lines = stderr.strip().splitlines()  # the inputs' resizes as the workers told them, then the interrupt
    assert run.returncode == 130 and lines[-1] == "interrupted", stderr
    assert all(line.startswith("INFO: ") for line in lines[:-1]), stderr
    assert seconds < 8, f"took {seconds:.1f} s to stop"  # 1 to 1.5 s; finishing the queued clips took 12 to 14
    written = sorted(out.iterdir())
    assert 1 <= len(written) < len(inputs) and all(p.suffix == ".etok" for p in written)  # no temporaries
    for path in written:
        assert elastictok.read_etok(path).counts.numel() == 20  # each written file whole


def _encode_busy_with_workers(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """``encode --workers 2`` of 200 clips with the micro preset, once its first file is written (both workers
    busy): the process and its workers' ids."""
    from crash_kill import session

    torch.manual_seed(0)
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(tmp_path / "micro")
    clip = Path(elastictok.__file__).parent / "assets" / "street.mp4"
    inputs = [shutil.copy(clip, tmp_path / f"clip{i}.mp4") for i in range(200)]
    run = subprocess.Popen([sys.executable, "-m", "elastictok.cli", "encode", *map(str, inputs), "-o",
                            str(tmp_path / "out"), "--model", str(tmp_path / "micro"), "--tokens", "32",
                            "--workers", "2", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 180
    while not list((tmp_path / "out").glob("*.etok")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the encode ended before it could be killed"
    workers = [pid for pid in session(run.pid) if pid != run.pid
               and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    return run, workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the process table of /proc")
def test_workers_end_with_their_killed_parent(tmp_path):
    """SIGKILL of the parent alone (the OOM killer, kill -9): its workers once lived on, idle, for good."""
    from crash_kill import session

    run, _ = _encode_busy_with_workers(tmp_path)
    try:
        run.kill()
        run.wait()
        deadline = time.monotonic() + 10
        while session(run.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not session(run.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the process table of /proc")
def test_a_killed_worker_is_one_error_line(tmp_path):
    """A worker SIGKILLed (out of memory): one error line naming the inputs not tokenized, nothing after it
    (multiprocessing once added its leaked-semaphore warnings)."""
    run, workers = _encode_busy_with_workers(tmp_path)
    try:
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = run.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    lines = stderr.splitlines()  # the resizes of the inputs written before the kill, then the error
    assert run.returncode == 2 and all(line.startswith("INFO: ") for line in lines[:-1]), stderr[-2000:]
    assert lines[-1].startswith("error: ") and "a worker process died" in lines[-1]
