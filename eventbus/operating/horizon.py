"""What holds back cleanup: the oldest snapshot that keeps vacuum from removing dead rows.

Every claimed and finished event leaves dead tuples behind, which vacuum removes only
once no snapshot can still see them. One long analytics query, a session forgotten
`idle in transaction`, a prepared transaction or a replication slot holds the xmin
horizon back for the whole cluster; the event table then grows, and claims walk over
ever more dead index entries (issue 15). Operators should see it coming: health and
metrics report the oldest holder, and how long it has held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import connections

from eventbus import sql
from eventbus.running.connections import connection_params


@dataclass(frozen=True)
class Holder:
    """One thing that holds the xmin horizon back."""

    kind: str  # "session", "prepared transaction" or "replication slot"
    name: str  # pid and application, the prepared transaction's gid, or the slot's name
    seconds: float | None  # how long it has held (None: a slot does not say)
    xid_age: int  # transactions since its xmin

    def __str__(self) -> str:
        held = f"for {self.seconds:.0f} s, " if self.seconds is not None else ""
        return f"{self.kind} {self.name} holds back cleanup ({held}{self.xid_age} xids)"


def holders(alias: str = "default") -> list[Holder]:
    """What holds the horizon back, oldest first (its xid age). Sessions of other roles
    show their xmin only to a role with ``pg_read_all_stats``."""
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.HORIZON_HOLDERS)
        return [_holder(row) for row in cursor.fetchall()]


def holders_direct(alias: str = "default") -> list[Holder]:
    """As `holders`, on a short-lived connection of its own (safe from any thread)."""
    with psycopg.connect(connect_timeout=3, **connection_params(connections[alias])) as conn:
        return [_holder(row) for row in conn.execute(sql.HORIZON_HOLDERS).fetchall()]


def oldest(found: list[Holder]) -> Holder | None:
    """The one that has held longest, by time where it is known, else by xid age."""
    timed = [h for h in found if h.seconds is not None]
    if timed:
        return max(timed, key=lambda h: h.seconds or 0.0)
    return max(found, key=lambda h: h.xid_age, default=None)


def held_back(found: list[Holder]) -> tuple[float, int]:
    """The longest hold in seconds and the largest xid age among `found` (0 for none)."""
    seconds = max((h.seconds or 0.0 for h in found), default=0.0)
    return seconds, max((h.xid_age for h in found), default=0)


def _holder(row: tuple[Any, ...]) -> Holder:
    kind, name, seconds, age = row
    return Holder(kind, name, None if seconds is None else float(seconds), int(age or 0))
