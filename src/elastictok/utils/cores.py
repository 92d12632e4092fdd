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
