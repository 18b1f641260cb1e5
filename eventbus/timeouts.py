"""Stop a handler that runs longer than its channel's timeout.

SIGALRM raises `Alarm` in the worker's main thread. `Alarm` derives from KeyboardInterrupt
on purpose: psycopg then cancels the query in flight on the server and leaves the
connection usable (the savepoint rolls back), and handler code that catches ``Exception``
cannot swallow it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Alarm(KeyboardInterrupt):
    pass


def _raise_alarm(signum: int, frame: FrameType | None) -> None:
    raise Alarm


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise `Alarm` inside the block after `seconds` (no limit off the main thread)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGALRM) is not _raise_alarm:  # once per process
        signal.signal(signal.SIGALRM, _raise_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextmanager
def armed_timer() -> Iterator[None]:
    """For a loop of handler calls: `rearm()` before each, disarmed once at the end."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGALRM) is not _raise_alarm:
        signal.signal(signal.SIGALRM, _raise_alarm)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)


def rearm(seconds: float | None) -> None:
    """Start the clock for the next handler call (one system call; 0 disarms)."""
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, seconds or 0)
