"""What listeners do to keep the storage small: rotate the queue, make and drop history.

Every listener calls these; the SQL functions (``eventbus.storing.layout``) make sure
that one session at a time does the work and that none waits long for a lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.db import connections, transaction

from eventbus.storing import layout

log = logging.getLogger("eventbus.storage")

ROTATION_LOCK_WAIT_MS = 200  # a rotation waits this long for in-flight claims, then retries
MAX_MOVED = 1000  # a slot still holding more events than this is not rotated yet
HISTORY_LOCK_WAIT_MS = 500
HISTORY_AHEAD = 2  # history partitions made ahead of time, beyond the current one
CHECK_INTERVAL = 1.0  # seconds between a listener's looks at the queue's slots
MAX_BACKOFF = 30.0  # seconds between tries while claims keep the drained slot locked


def rotate_queue(max_dead: int, alias: str = "default") -> str:
    """Empty the drained queue slot, and switch slots once the current one holds
    `max_dead` dead rows; returns what happened (see layout.ROTATE)."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(layout.ROTATE_QUEUE, [max_dead, MAX_MOVED, ROTATION_LOCK_WAIT_MS])
        return str(cursor.fetchone()[0])


def prepare_history(
    span_seconds: int, alias: str = "default", since: datetime | None = None
) -> int:
    """Make the history partitions from `since`'s span (now's) to HISTORY_AHEAD spans
    ahead; returns how many it made."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(layout.PREPARE, [span_seconds, HISTORY_AHEAD, HISTORY_LOCK_WAIT_MS, since])
        return int(cursor.fetchone()[0])


def expire_history(before: datetime, alias: str = "default") -> int:
    """Drop the history partitions that end before `before`; returns the events removed."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(layout.EXPIRE, [before, HISTORY_LOCK_WAIT_MS])
        return int(cursor.fetchone()[0])


@dataclass
class Rotation:
    """A listener's view of the rotation: logs only when it becomes blocked or free, and
    backs off while a claim transaction keeps the drained slot locked (each try holds up
    new claims for up to ROTATION_LOCK_WAIT_MS)."""

    max_dead: int
    alias: str
    worker: str
    blocked: str | None = None
    interval: float = CHECK_INTERVAL  # seconds to the next try
    _next: float = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def run(self) -> str:
        outcome = rotate_queue(self.max_dead, self.alias)
        locked = outcome == "locked"
        self.interval = min(self.interval * 2, MAX_BACKOFF) if locked else CHECK_INTERVAL
        self._next = time.monotonic() + self.interval
        moved = outcome not in ("small", "busy", "locked", "backlog")
        if moved:
            log.debug("worker %s: queue slots rotated (%s)", self.worker, outcome)
        if outcome in ("locked", "backlog"):
            if self.blocked != outcome:
                log.info(
                    "worker %s: queue rotation waits (%s)",
                    self.worker,
                    "a claim transaction held the drained slot"
                    if outcome == "locked"
                    else f"the drained slot still holds over {MAX_MOVED} events",
                )
            self.blocked = outcome
        elif moved and self.blocked:
            log.info("worker %s: queue rotation resumed", self.worker)
            self.blocked = None
        return outcome
