"""The cores this process may use, and how to share them among worker processes without oversubscription."""

from __future__ import annotations

import os

from ..errors import ElasticTokError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of ``workers`` processes so that all of them together use ``cores``."""
    if workers < 1:
        raise ElasticTokError(f"workers must be at least 1, got {workers}")
    return max(1, (cores or available_cores()) // workers)


def idle_cores() -> tuple[int, float]:
    """(cores free of other work, at least 1; the work already running): the available cores less the load
    average of the last minute, so that torch's threads do not fight whatever else runs (on a 2-core machine
    busy with one job, one thread is several times faster than two)."""
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this system
        busy = 0.0
    return max(1, min(cores, round(cores - busy))), busy
