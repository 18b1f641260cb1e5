"""How large the queue is, and which sessions keep it from rotating: health and metrics.

The queue's slots are emptied by TRUNCATE, which waits for every session holding a lock
on them. Claim transactions are short; a session that read the event table inside a
transaction it keeps open is not, and while it lasts the queue grows as a single table
would. Health names it, as it names a held snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from django.db import connections

from eventbus.running.connections import connection_params
from eventbus.storing import layout


@dataclass(frozen=True)
class Locker:
    pid: int
    application: str
    state: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"session {self.pid} ({self.application}, {self.state}) has held a lock on the "
            f"event queue for {self.seconds:.0f} s, so its slots cannot be emptied"
        )


def lockers(older_than: float, alias: str = "default") -> list[Locker]:
    """Sessions in a transaction older than `older_than` seconds that lock the queue."""
    with connections[alias].cursor() as cursor:
        cursor.execute(layout.QUEUE_LOCKERS, [older_than])
        return [Locker(int(p), str(a), str(s), float(t)) for p, a, s, t in cursor.fetchall()]


def queue_bytes(alias: str = "default") -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute(layout.QUEUE_BYTES)
        return int(cursor.fetchone()[0])


def queue_bytes_direct(alias: str = "default") -> int:
    """As `queue_bytes`, on a short-lived connection of its own (safe from any thread)."""
    with psycopg.connect(connect_timeout=3, **connection_params(connections[alias])) as conn:
        return int(conn.execute(layout.QUEUE_BYTES).fetchone()[0])
