"""Give a subscription added later the events its channel made before it existed.

A new subscription receives new events only: the trigger writes its rows from the
migration that added it on. To replay history, copy a sibling queue's events since a
chosen time (each change made one row per subscription, so one sibling's rows are the
channel's changes). Copies start pending, keep their original time, and never repeat:
only events older than the subscription's own first event are copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connections, transaction

from eventbus import sql
from eventbus.declaring import registry


@dataclass(frozen=True)
class Backfilled:
    queue: str
    source: str | None
    count: int
    first_id: int | None
    last_id: int | None

    def __str__(self) -> str:
        if not self.count:
            return f"{self.queue}: nothing to backfill"
        return (
            f"{self.queue}: copied {self.count} event(s) from {self.source} "
            f"(ids {self.first_id}..{self.last_id})"
        )


def backfill(
    queue: str, since: datetime, source: str | None = None, alias: str = "default"
) -> Backfilled:
    """Copy `source`'s events since `since` to `queue` (default source: the channel's
    queue with the most events since then, the channel's own name included)."""
    channel = registry.base_name(queue)
    if queue == channel:
        raise ValueError(f"{queue}: name one subscription (<channel>:<subscription>) to backfill")
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        if source is None:
            cursor.execute(
                sql.BACKFILL_SOURCES,
                {"queue": queue, "channel": channel, "prefix": f"{channel}:%", "since": since},
            )
            row = cursor.fetchone()
            if row is None:
                return Backfilled(queue, None, 0, None, None)
            source = str(row[0])
        cursor.execute(sql.BACKFILL, {"queue": queue, "source": source, "since": since})
        count, first, last = cursor.fetchone()
        if count:
            cursor.execute(*sql.notify_channels([queue]))
    return Backfilled(queue, source, int(count), first, last)
