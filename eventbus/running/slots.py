"""Handler slots: `listen --concurrency C` runs C claim loops in one worker process.

A handler that sends email or calls a webhook spends its time waiting on the network. A
worker running one handler at a time waits out every round trip in turn. So a process can
run C slots, each a thread that owns its own Django connection (Django's connections are
per thread) and claims, handles and commits exactly as a single worker does: a handler's
database effects still commit in the transaction that marks its event, row locks still
keep two slots off one event, and ordered keys still run one event at a time. Threads,
not asyncio: handlers are ordinary synchronous Django code, which an event loop would run
in a thread pool anyway; a thread per slot keeps each transaction on one connection, and
the GIL is released while a handler waits on a socket.

The process keeps one LISTEN connection. Its main thread waits on it and wakes one idle
slot per wake-up; a slot that claims all it asked for wakes another, so a burst spreads
over the slots and one event costs one claim, not C.

How many events a slot claims at once follows its handlers' speed: about
``CLAIM_SECONDS`` of work (20 events of a 50 ms email, 4 of a 250 ms webhook, a full
batch of a trivial handler), at most ``--batch-size``, so each claim's fixed cost (a few
round trips, a commit, the batch's prefetch query) is shared by many events. A slot
starts at one event per claim, so the first burst spreads over the slots; later, a burst
smaller than one claim runs in one slot (a lower ``--batch-size`` spreads it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from django.db import connections

from eventbus import sql
from eventbus.operating import metrics
from eventbus.running.executor import Executor, Outcome
from eventbus.running.ledger import SideConnection
from eventbus.running.liveness import Liveness
from eventbus.running.quarantine import Quarantine

log = logging.getLogger("eventbus.worker")

BEAT_INTERVAL = 1.0  # seconds a waiting slot sleeps before it beats again
SLOT_GRACE = 3.0  # seconds a slot may be silent beyond its handler's allowance (3 beats)
# Handler time a slot claims at once (the batch time budget's default). A claim costs a
# few round trips, a commit and the batch's prefetch query: claiming 0.2 s of 50 ms emails
# ran at 0.55 of this rate on the slow-relay benchmark, 0.02 s at a third.
CLAIM_SECONDS = 1.0


def claim_size(outcomes: list[Outcome], most: int) -> int:
    """About CLAIM_SECONDS of the handlers just seen, between 1 and `most`."""
    seconds = sum(o.seconds for o in outcomes) / len(outcomes)
    return max(1, min(most, int(CLAIM_SECONDS / max(seconds, 1e-6))))


class Slots:
    """C threads that drain `scope` when woken; started and stopped by their worker."""

    def __init__(
        self,
        count: int,
        worker_name: str,
        scope: sql.Scope,
        batch_size: int,
        alias: str,
        should_stop: Callable[[], bool],
        connection_errors: tuple[type[BaseException], ...],
        reconnect_max_delay: float = 10.0,
    ) -> None:
        self.count = count
        self.worker_name = worker_name
        self.scope = scope
        self.limit = batch_size
        self.alias = alias
        self.should_stop = should_stop
        self.connection_errors = connection_errors
        self.reconnect_max_delay = reconnect_max_delay
        self.side = SideConnection(alias)  # the crash ledger's, shared by the slots
        self.quarantine = Quarantine()
        self.liveness = [Liveness([time.monotonic(), 0.0]) for _ in range(count)]
        self._cond = threading.Condition()
        self._wakeups = 0  # drains asked for and not yet begun (at most `count`)
        self._draining = 0  # slots claiming or handling now
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.count):
            thread = threading.Thread(
                target=self._run, args=(index,), name=f"eventbus-slot-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """New events may be due (a NOTIFY, the poll): one slot drains. A wake-up while
        every slot is busy is kept, so an event committed during a drain is not missed."""
        with self._cond:
            self._wakeups = min(self._wakeups + 1, self.count)
            self._cond.notify()

    def wake_idle(self) -> None:
        """A slot claimed a full share, so more is likely due: bring in an idle slot."""
        with self._cond:
            if self.count - self._draining > self._wakeups:
                self._wakeups += 1
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.side.close()

    def hung(self) -> bool:
        """Some slot is silent beyond its handler's allowance (and a few beats): the
        process stops beating, and its supervisor kills it after the hang grace."""
        return any(cells.overdue(SLOT_GRACE) is not None for cells in self.liveness)

    # --- One slot ------------------------------------------------------------------------

    def _run(self, index: int) -> None:
        liveness = self.liveness[index]
        executor = Executor(
            self.worker_name,
            self.alias,
            should_stop=self.should_stop,
            liveness=liveness,
            slot=index,
            side=self.side,
        )
        executor.on_full_claim = self.wake_idle  # at once, before its handlers run
        executor.quarantine = self.quarantine
        delay = 0.5
        size = [1]
        try:
            while self._await_wakeup(liveness):
                try:
                    self._drain(executor, liveness, size)
                    delay = 0.5
                except self.connection_errors as exc:
                    self._drained()
                    if self.should_stop():
                        break
                    metrics.reconnected()
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    log.warning(
                        "worker %s slot %d lost the database (%s); reconnecting in %.1f s",
                        self.worker_name,
                        index,
                        reason,
                        delay,
                    )
                    delay = self._back_off(delay, liveness)
                except Exception as exc:  # a bug or an unforeseen error: never a dead slot
                    self._drained()
                    if self.should_stop():
                        break
                    log.exception(
                        "worker %s slot %d: unexpected error (%s); starting over in %.1f s",
                        self.worker_name,
                        index,
                        type(exc).__name__,
                        delay,
                    )
                    delay = self._back_off(delay, liveness)
                else:
                    self._drained()
        finally:
            with contextlib.suppress(Exception):
                executor.close()
            with contextlib.suppress(Exception):
                connections[self.alias].close()
            liveness.idle()

    def _await_wakeup(self, liveness: Liveness) -> bool:
        """Wait for a wake-up; False once the worker stops."""
        with self._cond:
            while not self._wakeups and not self.should_stop():
                liveness.beat()
                self._cond.wait(BEAT_INTERVAL)
            if self.should_stop():
                return False
            self._wakeups -= 1
            self._draining += 1
            return True

    def _drained(self) -> None:
        with self._cond:
            self._draining -= 1

    def _drain(self, executor: Executor, liveness: Liveness, size: list[int]) -> None:
        """Claim and handle until nothing is due. `size` (one cell) carries the claim size
        learnt from this slot's handlers across drains: one event until it has seen any."""
        connection = connections[self.alias]
        if connection.connection is None:  # this thread's own, (re)opened: name it
            with connection.cursor() as cursor:
                cursor.execute("SET application_name = 'eventbus-worker'")
        while not self.should_stop():
            liveness.beat()
            outcomes = executor.run_batch(self.scope, size[0])
            if not outcomes:
                break
            size[0] = claim_size(outcomes, self.limit)
        executor.idle()

    def _back_off(self, delay: float, liveness: Liveness) -> float:
        with contextlib.suppress(Exception):
            connections[self.alias].close()
        deadline = time.monotonic() + delay
        with self._cond:
            while not self.should_stop() and (left := deadline - time.monotonic()) > 0:
                liveness.beat()
                self._cond.wait(min(left, BEAT_INTERVAL))
        self.wake()  # start over with a drain: events may have come meanwhile
        return min(delay * 2, self.reconnect_max_delay)
