"""Interrupts held around torch's C code arrive afterwards, as themselves."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from elastictok.utils.runtime import interrupts_held


@pytest.mark.parametrize("other_thread", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_a_held_block_arrives_when_it_ends(signum, other_thread):
    """Also with another thread running (as tqdm's monitor or torch's pool do), which the kernel may hand
    a signal sent to the process."""
    arrived, done = [], threading.Event()
    helper = threading.Thread(target=done.wait, daemon=True)
    if other_thread:
        helper.start()
    previous = signal.signal(signum, lambda *_: arrived.append(signum))
    try:
        with interrupts_held():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # time for the signal to reach a handler
            assert arrived == []  # held: the block runs to its end
        assert arrived == [signum]  # and the interrupt is delivered once, not lost
    finally:
        signal.signal(signum, previous)
        done.set()

