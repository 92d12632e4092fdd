"""What every worker-process pool here shares (``tokenization.workers``, ``evaluation.pool``): a worker's share of
torch's threads, its log records and warnings shown by the parent as its own, its end with the parent, and the
parent's view of its workers.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch

from .runtime import interrupts_held

_output: queue.SimpleQueue = queue.SimpleQueue()  # in a worker process: its log records and warnings, unsent


def use_threads(threads: int) -> None:
    """Run torch on ``threads`` threads in this process, and one for inter-op work (a worker's share)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def log_levels() -> dict[str, int]:
    """The levels set on this process's loggers (the root's under ""), for its workers to log at."""
    loggers = logging.Logger.manager.loggerDict.items()
    return {"": logging.getLogger().level, **{name: logger.level for name, logger in loggers
                                              if isinstance(logger, logging.Logger) and logger.level}}


def output_for_parent(levels: dict[str, int]) -> None:
    """Log in this worker at the parent's ``levels``, and log and warn into a queue for the parent rather than to
    stderr (where Python's last-resort handler would print WARNING lines bare and drop INFO ones, and a
    warning would take two lines with its source)."""
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers = [logging.handlers.QueueHandler(_output)]  # records made picklable
    warnings.showwarning = _keep_warning


def _keep_warning(message, category: type[Warning], filename: str, lineno: int, *_) -> None:
    """A worker's ``warnings.showwarning``: the warning is kept for the parent to issue as its own."""
    try:
        pickle.dumps(category)
    except (pickle.PicklingError, AttributeError, TypeError):  # a class made on the fly cannot be sent
        category = UserWarning
    _output.put((str(message), category, filename, lineno))


def with_output(function: Callable, *args) -> tuple:
    """In a worker: ``function(*args)``, and what was logged or warned since the last call, for the parent."""
    result, output = function(*args), []
    while not _output.empty():
        output.append(_output.get_nowait())
    return result, output


def tell_here(output: list) -> None:
    """A worker's log records and warnings, logged and warned again in this process as if made here."""
    for item in output:
        if isinstance(item, logging.LogRecord):
            logging.getLogger(item.name).handle(item)
        else:
            warnings.warn_explicit(*item)


def exit_with_parent() -> None:
    """End this worker as soon as its parent process is gone (SIGKILLed, say), rather than idle for good."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _started() -> None:
    """A first job for each worker: it returns once the worker's initializer has run."""


def start_every_worker(executor: ProcessPoolExecutor, workers: int) -> None:
    """Start ``workers`` processes of ``executor`` now (imports, initializer), so that start-up is not counted as
    work, and show what they logged meanwhile. A Ctrl-C while they are handed their first job arrives once
    that is done, as one."""
    with interrupts_held():
        started = [executor.submit(with_output, _started) for _ in range(workers)]
    for future in started:
        tell_here(future.result()[1])


def running_workers(executor: ProcessPoolExecutor) -> list[multiprocessing.Process]:
    """``executor``'s worker processes still running (so each pid is still its own); there is no public way
    to list them."""
    return [p for p in list((executor._processes or {}).values()) if p.exitcode is None]
