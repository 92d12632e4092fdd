"""eval on worker processes: never more threads than this process may run, the numbers of one process on each
worker's share of the threads to the last digit, an error or Ctrl-C stops every worker at once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig, ElasticTokError
from elastictok.evaluation.measurement import EvalRun, evaluate_models
from elastictok.evaluation.pool import WorkerPool, pool_size


@contextlib.contextmanager
def torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _threads_here(state: dict, extra: int) -> tuple[int, int, str]:
    """A job: the torch threads of the worker running it, an argument back, and a value of the shared state."""
    return torch.get_num_threads(), extra, state["name"]


def test_a_pool_never_runs_more_threads_than_this_process_may():
    with torch_threads(1):
        assert pool_size(4) == 1  # eval then measures in this process
    with torch_threads(2), WorkerPool(3, {"name": "shared"}) as pool:
        assert (pool.workers, pool.threads) == (2, 1)
        results = []
        for extra in range(4):
            if not pool.idle:
                results += pool.done()
            pool.submit(extra, _threads_here, extra)
        while pool.idle < pool.workers:
            results += pool.done()
    assert sorted(results) == [(extra, (1, extra, "shared")) for extra in range(4)]


def comparable(report: dict) -> str:
    """A report as text, the tokens of every threshold's tokenizations included."""
    encodings = report.pop("_encodings")
    report["tokens"] = {key: [e.tokens.tolist() for e in per_input] for key, per_input in encodings.items()}
    return json.dumps(report, sort_keys=True)


def test_two_workers_give_one_process_numbers_to_the_last_digit(trained_micro, photo_folder):
    """Default thresholds (they wait for the model's own fixed lengths), a baseline of another grid, a video and a
    photo: two workers of one thread each give what this process gives on one thread, codecs included."""
    torch.manual_seed(0)
    baseline = ElasticTok(ElasticTokConfig.from_preset("micro", name="other")).eval()
    inputs = [str(photo_folder / "pan.mp4"), str(photo_folder / "photo0.jpg")]
    measured = {}
    for threads, workers in ((1, 1), (2, 2)):
        with torch_threads(threads):
            run = EvalRun(fractions=(0.25, 0.5, 1.0), progress=False, workers=workers)
            measured[workers] = evaluate_models(trained_micro, [baseline], inputs, None, run, baseline_names=["b"])
    assert len(measured[2]["thresholds"]) >= 3 and set(measured[2]["anchors"]) == {"H.264", "JPEG"}
    assert comparable(measured[2]) == comparable(measured[1])


def test_an_input_that_fails_in_a_worker_is_one_error(trained_micro, photo_folder, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    with torch_threads(2), pytest.raises(ElasticTokError, match="broken.mp4"):
        evaluate_models(trained_micro, [], [str(photo_folder / "pan.mp4"), str(tmp_path / "broken.mp4")],
                        None, EvalRun(fractions=(0.5, 1.0), progress=False, workers=2))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the process table of /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_eval_stops_its_workers_at_once(how, tmp_path):
    """Ctrl-C in a terminal signals eval and its workers, SIGTERM only eval: either way, one line, exit 130, no
    worker left and no report."""
    from crash_kill import interrupt, session

    from elastictok.models.pretrained import sample_video

    out = tmp_path / "ev"
    run = subprocess.Popen([sys.executable, "-m", "elastictok.cli", "eval", str(sample_video()), "--workers", "2",
                            "--out", str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    try:
        deadline = time.monotonic() + 120
        while len(_workers(session(run.pid), run.pid)) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3)  # the workers started and measuring
        assert run.poll() is None, "eval ended before it could be interrupted"
        workers = _workers(session(run.pid), run.pid)
        assert len(workers) == 2
        stderr, seconds = interrupt(run, how)
        left = [pid for pid in workers if pid in session(run.pid)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130 and stderr.strip().splitlines() == ["interrupted"], stderr
    assert seconds < 8, f"took {seconds:.1f} s to stop"
    assert not left and not out.exists()


def _workers(pids: list[int], parent: int) -> list[int]:
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if pid != parent and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found
