"""The crash ledger: batches whose handlers started, recorded where a rollback cannot
erase them (``eventbus.models.InflightRecord``).

A worker that dies mid-batch (kill -9, a segfault, the OOM killer, ``os._exit`` in a
handler) rolls its claim transaction back, so nothing inside it can count the attempt.
Before a batch's handlers run, one row naming its events is written through a second,
autocommitted connection. Once the batch has committed that row is stale, and it is
deleted in the same statement as the worker's next row: one round trip per batch.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg

from eventbus import conf, sql
from eventbus.running.connections import connect_side
from eventbus.running.liveness import pid_alive

COLLECT_INTERVAL = 60.0  # seconds between sweeps of stale rows left by dead workers
COLLECT_AGE = 60.0  # only rows at least this old are swept


class LedgerUnavailable(psycopg.OperationalError):
    """The ledger's connection failed: the worker reconnects, as for its claim connection."""


_open: weakref.WeakSet[CrashLedger] = weakref.WeakSet()


def close_all() -> None:
    """Close every ledger connection of this process (tests, one-off commands)."""
    for ledger in list(_open):
        ledger.close()


class SideConnection:
    """The autocommitted connection a ledger writes through, shared by the handler slots
    of one process (``listen --concurrency``).

    Writes that arrive while one is on the wire wait, and then go together, as one string
    of statements in one round trip (a group commit). With 32 slots a write each, one at
    a time, the slots queued 40-60 ms per claim behind the connection (measured)."""

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias
        self._conn: psycopg.Connection[Any] | None = None
        self._cond = threading.Condition()
        self._queue: list[_Write] = []
        self._writing = False

    def execute(self, query: Any, params: Any) -> Any:
        """Run one statement (autocommitted); its first row, or None."""
        write = _Write(query, params)
        with self._cond:
            self._queue.append(write)
            while self._writing and not write.finished:
                self._cond.wait()
            if not write.finished:  # this thread sends everything queued so far
                group, self._queue, self._writing = self._queue, [], True
        if not write.finished:
            try:
                self._send(group)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
        if write.error is not None:
            raise LedgerUnavailable(f"crash ledger: {write.error}") from write.error
        return write.row

    def _send(self, group: list[_Write]) -> None:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._close()
                self._conn = connect_side(self.alias)
            if len(group) == 1:
                cursor = self._conn.execute(group[0].query, group[0].params)
                group[0].row = cursor.fetchone() if cursor.description else None
            else:
                cursor = psycopg.ClientCursor(self._conn)
                cursor.execute("; ".join(cursor.mogrify(w.query, w.params) for w in group))
                for n, write in enumerate(group):
                    if n:
                        cursor.nextset()
                    write.row = cursor.fetchone() if cursor.description else None
        except psycopg.Error as exc:  # never the event's fault: the worker backs off
            self._close()  # reconnect on the next write
            for write in group:
                write.error = exc
        except BaseException as exc:  # no writer may take silence for a row
            self._close()
            for write in group:
                write.error = exc
            raise
        finally:
            for write in group:
                write.finished = True

    def close(self) -> None:
        with self._cond:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class _Write:
    """One statement waiting to be sent, and what came back."""

    def __init__(self, query: Any, params: Any) -> None:
        self.query, self.params = query, params
        self.row: Any = None
        self.error: BaseException | None = None
        self.finished = False


class CrashLedger:
    """One writer's starts. `worker` is the process's name (``host:pid``), or
    ``host:pid#slot`` for a handler slot, whose siblings' rows then look alive."""

    def __init__(
        self, worker: str, alias: str = "default", side: SideConnection | None = None
    ) -> None:
        self.worker = worker
        self.alias = alias
        self._side = side or SideConnection(alias)
        self.batch = 0  # this worker's last row: committed, or in flight now
        # A row whose worker sent a heartbeat this recently is no crash (see sql.LEDGER_START)
        self.alive_within = 3 * conf.get().HEALTH_INTERVAL
        self._host = _process(worker)[0]
        self._next_collect = time.monotonic() + COLLECT_INTERVAL
        _open.add(self)

    def started(self, events: Sequence[tuple[int, int]]) -> dict[int, int]:
        """Record a start for each (event id, attempts so far); drop the previous batch's
        row. Autocommitted: it survives whatever happens to the claim transaction.

        Returns the unfinished starts recorded before this one, by event id (most
        batches: none). One round trip either way.
        """
        batch, ids, workers, alive = self._execute(
            *sql.ledger_start(self.worker, events, self.batch, self.alive_within)
        )
        self.batch = int(batch)
        return self._unfinished(ids, workers, alive)

    def peek(self, events: Sequence[tuple[int, int]]) -> dict[int, int]:
        """The unfinished starts `started` would find, with nothing recorded."""
        _, ids, workers, alive = self._execute(
            *sql.ledger_start(self.worker, events, self.batch, self.alive_within, peek=True)
        )
        return self._unfinished(ids, workers, alive)

    def _unfinished(self, ids: Any, workers: Any, alive: Any) -> dict[int, int]:
        unfinished: dict[int, int] = {}
        for event_id, worker, looks_alive in zip(
            ids or (), workers or (), alive or (), strict=True
        ):
            if not looks_alive or self._gone_from_this_host(worker):
                unfinished[event_id] = unfinished.get(event_id, 0) + 1
        return unfinished

    def _gone_from_this_host(self, worker: str) -> bool:
        """A worker of this host whose process is gone died, whatever its heartbeat row
        says yet (its supervisor removes the row a moment after; a sibling may claim its
        events first)."""
        host, pid = _process(worker)
        return host == self._host and pid.isdigit() and not pid_alive(int(pid))

    def forget(self) -> None:
        """Delete the current batch's row now: its batch was lost with its connection, or
        committed with events left unstarted, which another worker may claim at once."""
        if self.batch:
            self._execute(sql.LEDGER_FORGET, [self.batch])
            self.batch = 0

    def collect_if_due(self) -> None:
        """Sweep rows left by dead workers once none of their events can still run."""
        if time.monotonic() >= self._next_collect:
            self._next_collect = time.monotonic() + COLLECT_INTERVAL
            self._execute(*sql.ledger_collect(COLLECT_AGE))

    def close(self) -> None:
        self._side.close()

    def _execute(self, query: Any, params: Any) -> Any:
        return self._side.execute(query, params)


def _process(worker: str) -> tuple[str, str]:
    """(host, pid) of a ledger writer's name, a slot's ``#n`` left off."""
    host, _, pid = worker.partition("#")[0].rpartition(":")
    return host, pid
