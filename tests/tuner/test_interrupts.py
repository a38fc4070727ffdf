"""Stop signals become flags, so no write is cut half-way."""
from __future__ import annotations

import os
import signal
import time

import pytest

from autotune.tuner.interrupts import deferred_signals, signals_to_flag


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_waits_for_the_block_to_finish(sig: int) -> None:
    before = signal.getsignal(sig)
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), sig)
            time.sleep(0.05)           # the handler has run by now; it must not have raised
            finished.append(True)
    assert finished == [True] and signal.getsignal(sig) == before


def test_signals_call_back_and_handlers_come_back() -> None:
    # the handlers in place before, whatever they are: a suite started in the background of a
    # non-interactive shell inherits SIGINT ignored, not Python's default_int_handler
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    seen: list[int] = []
    with signals_to_flag(seen.append):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert seen == [signal.SIGINT, signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in before} == before
