"""The wake-up side: a direct connection that LISTENs and waits for NOTIFYs.

A NOTIFY is only a hint that the event table has new rows; the table is the truth. So
the caller LISTENs first, then drains the table, then waits here with a timeout (the
poll fallback), and drains again whatever woke it.
"""

from __future__ import annotations

import select
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from eventbus.running.connections import connect_listen


class Notifier:
    def __init__(self, notify_channels: Iterable[str], alias: str = "default") -> None:
        self.notify_channels = sorted(set(notify_channels))
        self.alias = alias
        self._conn: psycopg.Connection[Any] | None = None
        self._held: set[str] = set()  # read by `poll`, not yet returned by `wait`

    def __enter__(self) -> Notifier:
        self._conn = connect_listen(self.alias)
        for channel in self.notify_channels:  # autocommit: each LISTEN is live on return
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def backend_pid(self) -> int:
        assert self._conn is not None
        return self._conn.info.backend_pid

    def wait(self, timeout: float, interrupt_fd: int | None = None) -> set[str]:
        """Block until a NOTIFY, `interrupt_fd` is readable, or `timeout` seconds pass.

        Returns the channels that notified. Raises ``psycopg.OperationalError`` when the
        connection is gone, so the caller reconnects.
        """
        assert self._conn is not None
        pgconn = self._conn.pgconn
        received = self._held | self._consume(pgconn)
        self._held = set()
        if received:
            return received
        fds = [pgconn.socket] + ([interrupt_fd] if interrupt_fd is not None else [])
        readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if pgconn.socket in readable:
            pgconn.consume_input()  # raises OperationalError on a closed connection
            return self._consume(pgconn)
        return set()

    def poll(self) -> set[str]:
        """The channels that notified since the last `poll` or `wait`, without waiting;
        the next `wait` returns them again (with whatever came since).

        For a worker busy draining, which looks at its connection only between batches.
        Raises ``psycopg.OperationalError`` when the connection is gone.
        """
        assert self._conn is not None
        pgconn = self._conn.pgconn
        pgconn.consume_input()  # reads what has arrived; libpq's socket never blocks
        received = self._consume(pgconn)
        self._held |= received
        return received

    @staticmethod
    def _consume(pgconn: Any) -> set[str]:
        channels = set()
        while (notify := pgconn.notifies()) is not None:
            channels.add(notify.relname.decode())
        return channels
