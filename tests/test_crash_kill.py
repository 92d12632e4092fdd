"""Crash-kill, short: tokenize-corpus, data shard, train and eval, each SIGKILLed once within 20 ms (fixed seed)
after the moment a kill does the most harm (a shard half-written, a log line past the checkpoint, a report
half-staged) and run again (train with --resume), end with what an uninterrupted run writes: no input lost or
repeated, no temporary left, no process of the killed run left alive. ``benchmarks/crash_kill.py`` kills at
many random points (see ``crash_kill.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crash_kill import cases, make_inputs, reference, trial

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists() or os.name != "posix",
                                reason="SIGKILL and the process table of /proc")
SEED = 0


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    pytest.importorskip("skimage.data", reason="scikit-image (a dev extra) provides the real photos")
    folder = tmp_path_factory.mktemp("crash-kill")
    make_inputs(folder)
    return folder


@pytest.mark.parametrize("name", ["data shard", "tokenize-corpus", "train", "eval"])
def test_a_killed_run_run_again_ends_as_an_uninterrupted_one(work, name):
    case = next(c for c in cases(work) if c.name == name)
    slug = name.replace(" ", "-")
    window = reference(case, work / f"{slug}-reference")
    result = trial(case, work / f"{slug}-killed", case.content(work / f"{slug}-reference"), window, SEED,
                   critical=1.0)
    assert result.landed, "the run ended before the kill"
    assert not result.problems, result.problems
