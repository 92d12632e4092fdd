"""Interrupts held around torch's C code arrive afterwards, as themselves."""

from __future__ import annotations

import os
import signal

import pytest

from elastictok.utils.runtime import interrupts_held


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_a_held_block_arrives_when_it_ends(signum):
    arrived = []
    previous = signal.signal(signum, lambda *_: arrived.append(signum))
    try:
        with interrupts_held():
            os.kill(os.getpid(), signum)
            assert arrived == []  # held: the block runs to its end
        assert arrived == [signum]  # and the interrupt is delivered, not lost
    finally:
        signal.signal(signum, previous)

