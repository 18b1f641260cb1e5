"""Stop a handler that runs longer than its timeout, without corrupting the transaction.

An exception raised from a signal at an arbitrary point can land inside Django's
``Atomic.__enter__``/``__exit__`` or inside psycopg's protocol code, and leave Django's
savepoint bookkeeping (or the wire protocol) out of step with the server. That used to
crash-loop workers. So nothing is ever raised into arbitrary code. When time is up:

- a handler waiting on a **query** gets the query cancelled on the server; psycopg then
  raises ``QueryCanceled`` from the query call, an ordinary error that Django's atomic
  blocks unwind correctly;
- a handler running **Python** gets `Deadline` raised where it stands, but only when no
  frame between it and the executor belongs to Django's transaction or backend code or to
  psycopg; otherwise it is looked at again 50 ms later. A signal handler runs only where
  the interpreter checks for pending work: after a call returns, at a loop's backward
  jump, on entering a function, or inside a blocking C call, so the exception surfaces at
  one of those points of handler code. (Raising from a line-trace function was tried and
  dropped: a line event fires just before a ``with`` block's ``__exit__`` is called, and
  an exception there skips it, leaving Django's atomic block open.)
- a handler running a loop of short queries is stopped at its next query by the
  executor (``eventbus.running.executor``), as if that query had failed.

On the main thread the clock is ``SIGALRM`` (one system call per attempt). Off the main
thread (several handler threads per process) a watchdog thread polls the armed limits,
cancels queries the same way, and raises `Deadline` in the handler's thread with
``PyThreadState_SetAsyncExc`` only while that thread is executing handler bytecode, so the
exception surfaces exactly there. A thread blocked in a C call other than a query (a
socket read with no timeout) is interrupted when the call returns; one that never returns
is found by the supervisor's hang detection.

The executor still checks the connection's transaction state after every attempt and
never commits on a connection whose state is unknown (``eventbus.running.executor``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dis
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

RECHECK = 0.05  # seconds between further interruptions once a deadline has passed
RECANCEL = 1.0  # seconds before a query that ignored a cancel is cancelled again
WATCH_TICK = 0.01  # the watchdog's polling period (threads only)

# Code that must never see an exception raised from outside: it keeps state in step with
# the server (savepoints, autocommit, the wire protocol).
_UNSAFE_PATHS = (
    "/django/db/transaction.py",
    "/django/db/backends/",
    "/django/db/utils.py",
    "/psycopg/",
    "/psycopg_binary/",
    "/eventbus/running/timeouts.py",
    "/eventbus/running/savepoints.py",
)
_QUERY_PATHS = ("/psycopg/", "/psycopg_binary/")
_CALLS = {dis.opmap[name] for name in ("CALL", "PRECALL", "CALL_FUNCTION_EX") if name in dis.opmap}


class Deadline(BaseException):
    """Raised into a handler whose time is up. A BaseException: ``except Exception`` in
    handler code cannot swallow it. The executor reports it as ``HandlerTimeout``."""


@dataclass(eq=False)
class Limit:
    """One armed time limit: a handler call running on `thread_id` above `boundary`."""

    seconds: float
    deadline: float
    thread_id: int
    boundary: FrameType | None
    cancel: Callable[[], Any] | None
    fired: bool = False  # the deadline passed while the call ran
    active: bool = True
    cancelled_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    main: bool = False  # on the main thread: SIGALRM is the clock
    fires_at: float = math.inf  # when the SIGALRM timer is set to fire (main thread)

    def rearm(self, seconds: float | None) -> None:
        """Start the clock for the next call of a loop (no limit when `seconds` is None or
        0). The timer is set only when it would fire after the new deadline: in a loop of
        quick calls it fires once, early, and `_on_alarm` sets it again for what is left,
        so most calls cost no system call."""
        self.fired = False
        self.seconds = seconds or 0.0
        self.deadline = time.monotonic() + seconds if seconds else math.inf
        if self.main and self.deadline < self.fires_at:
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.fires_at = self.deadline


def _path(frame: FrameType) -> str:
    return frame.f_code.co_filename.replace("\\", "/")


def classify(frame: FrameType | None, boundary: FrameType | None) -> str:
    """Where a thread stands, from its innermost frame out to the executor's frame.

    ``query``: inside psycopg (waiting on the server); ``unsafe``: inside Django's
    transaction or backend code; ``safe``: handler code only; ``outside``: the thread is
    no longer in the handler call.
    """
    where = "safe"
    while frame is not None and frame is not boundary:
        path = _path(frame)
        if any(p in path for p in _QUERY_PATHS):
            return "query"
        if any(p in path for p in _UNSAFE_PATHS):
            where = "unsafe"
        frame = frame.f_back
    return where if frame is boundary or boundary is None else "outside"


def _cancel(limit: Limit) -> None:
    now = time.monotonic()
    if limit.cancel is None or now - limit.cancelled_at < RECANCEL:
        return
    limit.cancelled_at = now
    with contextlib.suppress(Exception):  # a gone connection runs no query either
        limit.cancel()


# --- Main thread: SIGALRM --------------------------------------------------------------

_main_limit: Limit | None = None


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    limit = _main_limit
    if limit is None or not limit.active:
        return
    now = time.monotonic()
    if now < limit.deadline:  # set for an earlier call of a loop: wait for what is left
        limit.fires_at = limit.deadline if limit.deadline < math.inf else math.inf
        if limit.fires_at < math.inf:
            signal.setitimer(signal.ITIMER_REAL, limit.deadline - now)
        return
    limit.fired = True
    where = classify(frame, limit.boundary)
    if where == "outside":
        return
    signal.setitimer(signal.ITIMER_REAL, RECHECK)  # look again until the call ends
    limit.fires_at = now + RECHECK
    if where == "query":
        _cancel(limit)
    elif where == "safe":
        raise Deadline
    # "unsafe": inside Django's transaction or backend code; look again in RECHECK.


_installed = False


@contextmanager
def _main_thread_limit(limit: Limit) -> Iterator[Limit]:
    global _main_limit, _installed
    if not _installed:  # once per process
        signal.signal(signal.SIGALRM, _on_alarm)
        _installed = True
    limit.main = True
    _main_limit = limit
    signal.setitimer(signal.ITIMER_REAL, limit.seconds)
    limit.fires_at = limit.deadline
    try:
        yield limit
    finally:
        limit.active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        _main_limit = None


# --- Other threads: a watchdog ---------------------------------------------------------


class _Watchdog:
    """One daemon thread per process that enforces the limits of non-main threads."""

    def __init__(self) -> None:
        self._limits: set[Limit] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, limit: Limit) -> None:
        with self._lock:
            self._limits.add(limit)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="eventbus-watchdog")
                self._thread.daemon = True
                self._thread.start()
        self._wake.set()

    def remove(self, limit: Limit) -> None:
        with self._lock:
            self._limits.discard(limit)

    def _run(self) -> None:
        while True:
            with self._lock:
                limits = list(self._limits)
            if not limits:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            now = time.monotonic()
            frames = sys._current_frames() if any(now >= x.deadline for x in limits) else {}
            for limit in limits:
                if now >= limit.deadline:
                    self._enforce(limit, frames.get(limit.thread_id))
            time.sleep(WATCH_TICK)

    @staticmethod
    def _enforce(limit: Limit, frame: FrameType | None) -> None:
        with limit.lock:
            if not limit.active:
                return
            limit.fired = True
            where = classify(frame, limit.boundary)
            if where == "query":
                _cancel(limit)
            elif where == "safe" and frame is not None and not _in_c_call(frame):
                _async_raise(limit.thread_id, Deadline)


def _in_c_call(frame: FrameType) -> bool:
    """The innermost Python frame is at a call instruction: the thread is inside C code,
    and an exception set now would surface after the call returns, wherever that is."""
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] in _CALLS


def _async_raise(thread_id: int, exc: type[BaseException] | None) -> None:
    target = ctypes.py_object(exc) if exc is not None else ctypes.py_object()
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target)


_watchdog = _Watchdog()


@contextmanager
def _thread_limit(limit: Limit) -> Iterator[Limit]:
    _watchdog.add(limit)
    try:
        yield limit
    finally:
        with limit.lock:
            limit.active = False
        _watchdog.remove(limit)
        if limit.fired:  # drop a Deadline set but not yet delivered
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(limit.thread_id), None)


# --- The API ---------------------------------------------------------------------------


@contextmanager
def time_limit(
    seconds: float | None,
    cancel: Callable[[], Any] | None = None,
    boundary: FrameType | None = None,
) -> Iterator[Limit | None]:
    """Stop the block after `seconds` (see the module docstring for how).

    `cancel` cancels the query running on the handler's connection; `boundary` is the
    frame that calls the handler (frames above it are handler code). Yields the `Limit`,
    whose ``fired`` tells afterwards whether time ran out.
    """
    if not seconds:
        yield None
        return
    limit = Limit(seconds, time.monotonic() + seconds, threading.get_ident(), boundary, cancel)
    with _enforced(limit):
        yield limit


@contextmanager
def loop_limit(
    cancel: Callable[[], Any] | None = None, boundary: FrameType | None = None
) -> Iterator[Limit]:
    """One limit for a loop of short calls: ``limit.rearm(seconds)`` before each call.

    Cheaper than `time_limit` per call (the trivial-handler loop of isolation="batch"
    runs tens of thousands of calls a second).
    """
    limit = Limit(0.0, math.inf, threading.get_ident(), boundary, cancel)
    with _enforced(limit):
        yield limit


@contextmanager
def _enforced(limit: Limit) -> Iterator[Limit]:
    if threading.current_thread() is threading.main_thread():
        with _main_thread_limit(limit):
            yield limit
    else:
        with _thread_limit(limit):
            yield limit
