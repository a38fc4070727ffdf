"""SIGINT, SIGTERM and SIGHUP as flags: a stop request that never cuts a write to the study or MLflow half-way.

A Python signal handler that raises (the default KeyboardInterrupt) can land anywhere: inside
SQLAlchemy creating tables (leaving a store neither Optuna nor MLflow can open again), or inside a
Thread.join, which on Python 3.11 can then report a live thread as finished. The controller
instead records the signal and stops at a point of its choosing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

# SIGHUP: the terminal or SSH session closed; it stops a search like Ctrl-C rather than killing it mid-write
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_to_flag(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Within: SIGINT, SIGTERM and SIGHUP call `on_signal(signum)` instead of raising; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: on_signal(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Within: a SIGINT or SIGTERM waits, and is raised as KeyboardInterrupt once the block is done."""
    caught: list[int] = []
    with signals_to_flag(caught.append):
        yield
    if caught:
        raise KeyboardInterrupt
