"""Suspects run alone in their process: the handler slots' shared/exclusive lock.

An event whose handler was in flight when its worker died is a suspect (the crash ledger
counts the death against it, and makes it dead after ``CRASH_LIMIT``). With several
handler slots in a process, a death kills every slot's handler in flight, so the events
beside a killer would be counted too, and at each rerun the killer would take them down
again, until the innocent ones died with it. So a slot runs a suspect only once no other
slot of the process is handling, and the others wait until it has finished: a death then
counts against the suspect alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WAIT_BEAT = 1.0  # seconds between liveness beats of a slot waiting here


class Quarantine:
    """Many slots handle at once (`shared`), or one suspect alone (`exclusive`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._handling = 0
        self._alone = False
        self._waiting_alone = 0  # suspects waiting: new batches wait behind them

    @contextmanager
    def shared(self, beat: Callable[[], None]) -> Iterator[None]:
        with self._cond:
            while self._alone or self._waiting_alone:
                beat()  # waiting is progress, not a hang
                self._cond.wait(WAIT_BEAT)
            self._handling += 1
        try:
            yield
        finally:
            with self._cond:
                self._handling -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self, beat: Callable[[], None]) -> Iterator[None]:
        with self._cond:
            self._waiting_alone += 1
            try:
                while self._alone or self._handling:
                    beat()
                    self._cond.wait(WAIT_BEAT)
            finally:
                self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()
