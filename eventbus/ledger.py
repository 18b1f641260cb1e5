"""The crash ledger: attempts that started, recorded where a rollback cannot erase them.

A worker that dies mid-batch (kill -9, a segfault, the OOM killer, ``os._exit`` in a
handler) rolls its claim transaction back, so nothing inside it can count the attempt.
Before a batch's handlers run, its event ids are written here through a second,
autocommitted connection; once the batch has committed, they are forgotten again (in the
same statement as the next batch's starts, so it costs one round trip per batch). An
entry that survives is a start that never finished.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg

from eventbus import sql
from eventbus.connections import connect_side


class LedgerUnavailable(psycopg.OperationalError):
    """The ledger's connection failed: the worker reconnects, as for its claim connection."""


_open: weakref.WeakSet[CrashLedger] = weakref.WeakSet()


def close_all() -> None:
    """Close every ledger connection of this process (tests, one-off commands)."""
    for ledger in list(_open):
        ledger.close()


class CrashLedger:
    def __init__(self, worker: str, alias: str = "default") -> None:
        self.worker = worker
        self.alias = alias
        self._conn: psycopg.Connection[Any] | None = None
        self._finished: list[int] = []
        _open.add(self)

    def started(self, events: Sequence[tuple[int, int]]) -> None:
        """Record a start for each (event id, attempts so far); forget the finished ones.
        Autocommitted: it survives whatever happens to the claim transaction."""
        self._execute(*sql.ledger_start(self.worker, events, self._finished))
        self._finished = []

    def unstart(self, ids: Sequence[int]) -> None:
        """Take back the last start of `ids`: their batch was lost with its connection."""
        self._execute(*sql.ledger_unstart(ids))

    def finish(self, ids: Sequence[int]) -> None:
        """`ids`' batch committed: their entries are stale now, deleted with the next write."""
        self._finished.extend(ids)

    def flush(self) -> None:
        """Forget the finished entries now (the worker is about to idle or stop)."""
        if self._finished:
            self._execute(*sql.ledger_forget(self._finished))
            self._finished = []

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _execute(self, query: Any, params: Any) -> None:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self.close()
                self._conn = connect_side(self.alias)
            self._conn.execute(query, params)
        except psycopg.OperationalError as exc:
            self.close()  # reconnect on the next write
            raise LedgerUnavailable(f"crash ledger: {exc}") from exc
