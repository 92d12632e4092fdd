"""Worker processes for eval's independent passes, never running more threads than this process may.

This process may run ``torch.get_num_threads()`` threads (the caller's choice: ``torch.set_num_threads``,
OMP_NUM_THREADS, or every core). A pool of W workers (at most that many) gives each worker that number
// W torch threads and waits meanwhile, so all of them together run no more. The codecs run on one
thread in any case (``anchors``). Each worker gets the shared ``state`` (the models, ...) once when it
starts; a job is a picklable function called there as ``function(state, *args)``.

Ctrl-C, an error or a worker that dies stops every worker at once: a worker ignores Ctrl-C itself
(the terminal sends it to the whole process group) and is terminated by this process, which raises.
A worker also ends when this process is killed. What a worker logs or warns comes back with its result
and is logged or warned again here.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

import torch

from ..errors import ElasticTokError
from ..utils.cores import threads_per_worker
from ..utils.processes import (exit_with_parent, log_levels, output_for_parent, running_workers, start_every_worker,
                               tell_here, use_threads, with_output)
from ..utils.runtime import blocked_signals, release_interrupts

_state: dict = {}  # per worker process: what every job there reads


def pool_size(workers: int) -> int:
    """The workers a pool of ``workers`` starts: at most the threads this process may run, at least one."""
    return max(1, min(workers, torch.get_num_threads()))


def _start(blocked_by_parent: set | None, levels: dict[str, int], threads: int, state: dict) -> None:
    """A worker's start: its share of the threads, the shared state; Ctrl-C ignored (the parent stops it)."""
    exit_with_parent()
    output_for_parent(levels)
    use_threads(threads)
    _state.update(state)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    release_interrupts(blocked_by_parent)


def _call(function: Callable, args: tuple):
    """A job, in a worker: ``function`` called with the worker's copy of the shared state first."""
    return function(_state, *args)


class WorkerPool:
    """``workers`` processes (at most torch's threads here), each with an equal share of those threads and
    its own copy of ``state``. ``submit`` a job, then ``done`` hands back finished jobs' results."""

    def __init__(self, workers: int, state: dict):
        self.workers = pool_size(workers)
        self.threads = threads_per_worker(self.workers, torch.get_num_threads())
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
        self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start,
                                             initargs=(blocked_signals(), log_levels(), self.threads, state))
        self._running: dict[Future, object] = {}
        try:
            start_every_worker(self._executor, self.workers)  # each gets its copy of the state now
        except BrokenProcessPool:
            self.close(stop_running=True)
            raise ElasticTokError("a worker process could not start (out of memory?); try fewer workers") from None
        except BaseException:
            self.close(stop_running=True)
            raise

    @property
    def idle(self) -> int:
        """Workers without a job."""
        return self.workers - len(self._running)

    def submit(self, key: object, function: Callable, *args) -> None:
        """Run ``function(state, *args)`` on a worker; ``done`` gives back its result under ``key``."""
        self._running[self._executor.submit(with_output, _call, function, args)] = key

    def done(self) -> list[tuple[object, object]]:
        """(key, result) of the jobs that finish next (waits for at least one); an error in a job is raised here."""
        finished, _ = wait(self._running, return_when=FIRST_COMPLETED)
        results = []
        for future in finished:
            key = self._running.pop(future)
            try:
                result, output = future.result()
            except BrokenProcessPool:
                raise ElasticTokError("a worker process died (out of memory?); try fewer workers") from None
            tell_here(output)
            results.append((key, result))
        return results

    def close(self, stop_running: bool = False) -> None:
        """End the workers; with ``stop_running`` (an interrupt, an error) terminate those still working."""
        if stop_running:
            for process in running_workers(self._executor):
                process.terminate()
        self._executor.shutdown(cancel_futures=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(stop_running=exc_type is not None)
