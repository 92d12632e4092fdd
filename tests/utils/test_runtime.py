"""Interrupts held around torch's C code arrive afterwards, as themselves."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from elastictok.utils.runtime import INTERRUPTS, interrupts_held


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



def test_an_interrupt_while_the_handlers_are_put_back_leaves_every_one_restored(monkeypatch):
    """Python runs a pending signal's handler before it swaps a handler; one that raises there must not
    leave the hold's note-only handler installed (which would swallow every later SIGTERM)."""
    before = {signum: signal.getsignal(signum) for signum in INTERRUPTS}
    swap, calls = signal.signal, []

    def ctrl_c_then_swap(signum, handler):
        calls.append(signum)
        if len(calls) == 2 + 2:  # two installed, SIGINT put back: a Ctrl-C as SIGTERM's is put back
            os.kill(os.getpid(), signal.SIGINT)
        return swap(signum, handler)

    monkeypatch.setattr(signal, "signal", ctrl_c_then_swap)
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            pass
    monkeypatch.undo()
    assert {signum: signal.getsignal(signum) for signum in INTERRUPTS} == before
