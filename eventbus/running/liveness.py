"""Progress that a worker reports to its supervisor through shared memory, not the database.

A worker whose claim connection went half-open blocks in a socket read forever; its
database heartbeat stops, but so might a healthy worker's inside a long handler. So each
worker writes two numbers into memory shared with its supervisor: when it last made
progress, and how long it may legitimately stay silent now (the timeout of the handler it
is running, or zero). The supervisor kills a worker silent for longer than that plus a
grace period, and starts another; the events it held run again.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

BEAT, ALLOWANCE = 0, 1


def pid_alive(pid: int) -> bool:
    """A process with this pid runs on this host (perhaps not ours to signal). A zombie,
    dead but not yet reaped by its parent, is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux): trust the signal
        return True


class Liveness:
    """The worker's side: ``beat()`` on progress, ``busy(seconds)`` around a handler."""

    def __init__(self, cells: Any = None) -> None:
        self._cells = cells if cells is not None else new_cells()

    @property
    def cells(self) -> Any:
        return self._cells

    def beat(self) -> None:
        self._cells[BEAT] = time.monotonic()

    def busy(self, seconds: float | None) -> None:
        """A handler starts that may run `seconds` (None: no limit) without a beat."""
        self._cells[ALLOWANCE] = math.inf if seconds is None else seconds
        self._cells[BEAT] = time.monotonic()

    def idle(self) -> None:
        self._cells[ALLOWANCE] = 0.0
        self._cells[BEAT] = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self._cells[BEAT]

    def overdue(self, grace: float) -> float | None:
        """Seconds of silence beyond the allowance plus `grace`, or None if not hung."""
        silence = self.silent_for()
        limit = self._cells[ALLOWANCE] + grace
        return silence if silence > limit else None


def new_cells() -> SynchronizedArray[float] | Any:
    """Two doubles in shared memory, inherited by a forked worker (no lock: one writer)."""
    cells = multiprocessing.get_context("fork").RawArray("d", 2)
    cells[BEAT] = time.monotonic()
    return cells
