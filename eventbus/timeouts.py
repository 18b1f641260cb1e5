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
