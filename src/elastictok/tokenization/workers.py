"""Tokenizing many files on every core without oversubscription.

Torch runs one thread per core in each process by default, so N plain worker processes on C
cores run N*C threads that fight over C cores (measured: 20 to 50 times slower than one process).
``TokenizerPool`` starts N workers (at most C) and gives each ``utils.cores.threads_per_worker(N)`` = C // N
threads, so the total never exceeds the cores. Each worker loads the model once; inputs are handed out one
file at a time, and results come back in input order. A file that fails gives its
``ElasticTokError`` in place of a result; the others go on. What a worker logs or warns comes back
with its result and is logged or warned again here, so it is printed as this process prints its own.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator

import torch
from tqdm import tqdm

from ..errors import ElasticTokError
from ..utils.cores import available_cores, threads_per_worker
from ..utils.processes import (exit_with_parent, log_levels, output_for_parent, running_workers, start_every_worker,
                               tell_here, use_threads, with_output)
from ..utils.runtime import blocked_signals, release_interrupts
from .tokenizer import tokenize


class WorkerDiedError(ElasticTokError):
    """An input was not tokenized because a worker process died: not a fault of the input."""


_worker: dict = {}  # per worker process: the model and the tokenize() keywords


def _start_worker(model, threads: int, bf16: bool, kwargs: dict) -> None:
    from ..models.registry import from_pretrained

    use_threads(threads)
    _worker["model"] = (from_pretrained(model) if isinstance(model, (str, os.PathLike)) else model).eval()
    _worker["kwargs"] = kwargs
    _worker["bf16"] = bf16


def _tokenize_one(path: str):
    try:
        device = next(_worker["model"].parameters()).device.type
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=_worker["bf16"]):
            return tokenize(_worker["model"], path, **_worker["kwargs"])
    except ElasticTokError as exc:
        return exc


def _tokenize_in_worker(path: str):
    """``_tokenize_one`` in a worker process; None once the worker was interrupted (Ctrl-C, or the pool
    closing early), for this input and each one already queued to it, so that the worker exits at once."""
    if _worker.get("interrupted"):
        return None
    _worker["busy"] = True
    try:
        return _tokenize_one(path)
    except KeyboardInterrupt:
        return None
    finally:
        _worker["busy"] = False


def _on_ctrl_c(signum, frame) -> None:
    """A worker's SIGINT handler: stop the input it is tokenizing, if any, and the ones after it. An idle
    worker (waiting for input) only takes note: raising there would print a traceback."""
    _worker["interrupted"] = True
    if _worker.get("busy"):
        raise KeyboardInterrupt


def _quiet_interrupt_in_finalizer(unraisable) -> None:
    """A Ctrl-C that lands in a finalizer (``__del__``) cannot stop the input; Python would print it as an
    ignored exception. The worker has taken note of it (``_on_ctrl_c``): print nothing."""
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def _start_worker_process(blocked_by_parent: set | None, levels: dict[str, int], *args) -> None:
    """The pool's initializer: ``_start_worker``, then handle SIGINT. Workers start with interrupts held,
    so that Ctrl-C during their start (importing torch, loading the model) prints no traceback from each;
    one that came meanwhile arrives here. A worker ends with its parent, and holds no semaphore a kill
    would leak (tqdm's lock across processes is a named one: multiprocessing would name it at exit). What
    it logs and warns goes to the parent with its results."""
    exit_with_parent()
    output_for_parent(levels)
    tqdm.set_lock(threading.RLock())
    _start_worker(*args)
    sys.unraisablehook = _quiet_interrupt_in_finalizer
    signal.signal(signal.SIGINT, _on_ctrl_c)
    release_interrupts(blocked_by_parent)


def _interrupt(process) -> None:
    """Interrupt a worker as Ctrl-C would (on POSIX; elsewhere there is no such signal: stop it)."""
    if os.name != "posix":
        process.terminate()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGINT)


class TokenizerPool:
    """``workers`` processes (at most one a core), each with ``threads_per_worker(workers)`` torch threads and its
    own model.

    ``model``: a model directory or bundled name (each worker loads it) or a model of any family
    (sent to each worker once). ``kwargs`` are ``tokenize`` keywords (target, search,
    window, fps, fit...); ``bf16`` runs them under bf16 autocast. With one worker the work runs in
    this process, on every core.
    """

    def __init__(self, model, workers: int = 1, cores: int | None = None, bf16: bool = False, **kwargs):
        cores = cores or available_cores()
        self.workers = min(workers, cores)  # more would run more threads than cores, one each
        self.threads = threads_per_worker(self.workers, cores)
        self._executor = None
        if self.workers == 1:
            self._previous_threads = torch.get_num_threads()
            _start_worker(model, self.threads, bf16, kwargs)
        else:
            context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker_process,
                                                 initargs=(blocked_signals(), log_levels(), model, self.threads,
                                                           bf16, kwargs))
            try:
                start_every_worker(self._executor, self.workers)  # each loads its model now
            except BaseException:
                self.close(stop_running=True)
                raise

    def map(self, paths: Iterable[str | os.PathLike]) -> Iterator:
        """Per path, in order: its ``TokenizedVideo``, or the ``ElasticTokError`` that refused it
        (a ``WorkerDiedError`` when the worker tokenizing it died, e.g. out of memory: then for every
        path after it)."""
        paths = [str(p) for p in paths]
        if self.workers == 1:
            return (_tokenize_one(p) for p in paths)
        return self._results(paths)

    def _results(self, paths: list[str]) -> Iterator:
        results, broken = self._executor.map(functools.partial(with_output, _tokenize_in_worker), paths), False
        for path in paths:
            if not broken:
                try:
                    result, output = next(results)
                    tell_here(output)
                    yield result if result is not None else WorkerDiedError(f"{path}: not tokenized, a worker "
                                                                            "was interrupted")
                    continue
                except BrokenProcessPool:
                    broken = True
            yield WorkerDiedError(f"{path}: not tokenized, a worker process died (out of memory?)")

    def close(self, stop_running: bool = False) -> None:
        """Drop the inputs still queued; with ``stop_running`` (an interrupt, an error, or the caller done
        early) also stop the workers' current inputs, rather than wait for them to finish."""
        if self._executor is not None:
            if stop_running:
                for process in running_workers(self._executor):
                    _interrupt(process)
            self._executor.shutdown(cancel_futures=True)
            self._executor = None
        elif self.workers == 1 and _worker:
            torch.set_num_threads(self._previous_threads)
            _worker.clear()

    def __enter__(self) -> "TokenizerPool":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(stop_running=exc_type is not None)
