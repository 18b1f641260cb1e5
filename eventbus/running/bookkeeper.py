"""The supervisor's database chores, on a thread of their own.

The supervisor must keep watching its workers whatever the database does: a query stuck
on a half-open connection in its loop would stop it from killing hung workers,
restarting dead ones and obeying SIGTERM. So its few writes (vouching for workers that
make progress, removing the rows of workers that are gone) go through a queue to this
thread, on its own connection with keepalives, a connect timeout and a statement timeout.
A chore that fails is logged at debug level and dropped: the next one tries again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from eventbus import sql
from eventbus.running.connections import connect_side

log = logging.getLogger("eventbus.supervisor")

STATEMENT_TIMEOUT_MS = 5_000


class Bookkeeper:
    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._chores: queue.Queue[tuple[Any, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def vouch(self, names: Sequence[str]) -> None:
        """Refresh the heartbeat rows of these workers (they are making progress)."""
        if names:
            self._put(sql.VOUCH_FOR_WORKERS, [list(names)])

    def forget(self, name: str, *, stopped: bool = False, wait: float = 0.0) -> None:
        """Remove a dead worker's heartbeat row, so that its crash-ledger rows count as
        crashes. `stopped`: it was killed at the end of its shutdown grace, not by its
        events, so its in-flight batch is no crash: its ledger rows go too. `wait`: up to
        this many seconds for it to be done (before a replacement claims its events)."""
        self._put(sql.FORGET_WORKER, [name])
        if stopped:
            self._put(sql.LEDGER_FORGET_WORKER, [name])
        if wait:
            done = threading.Event()
            self._put(None, done)
            done.wait(wait)

    def stop(self, timeout: float) -> None:
        """Finish queued chores (at most `timeout` seconds), then close."""
        if self._thread is not None:
            self._chores.put(None)
            self._thread.join(timeout)

    def _put(self, query: Any, params: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="eventbus-bookkeeper", daemon=True
            )
            self._thread.start()
        self._chores.put((query, params))

    def _run(self) -> None:
        while (chore := self._chores.get()) is not None:
            if chore[0] is None:  # a marker: everything before it is done
                chore[1].set()
                continue
            try:
                self._connection().execute(*chore)
            except psycopg.Error as exc:
                log.debug("supervisor chore failed (%s); dropped", exc)
                self._close()
        self._close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._close()
            self._conn = connect_side(self.alias)
            self._conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
