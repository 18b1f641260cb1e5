"""Give subscriptions the events their channel made before they existed.

Two cases, both about a channel's subscriptions (its queues ``<channel>:<subscription>``):

- **A subscription added later** receives new events only: the trigger writes its rows
  from the migration that added it on. ``recover --backfill`` copies the channel's
  changes since a chosen time from its other queues, each change once (the rows of one
  change in sibling queues are alike but for their queue), that the subscription does
  not hold. Copies start pending and keep their original time. Backfills of one queue
  take turns, so two at once copy a change once. A change whose copy was handled and
  then purged is copied again by a later run: run it once.
- **A channel that gained subscriptions** keeps the runnable events written before,
  under its own name, which no handler takes any more. Listeners fan them out to the
  subscriptions (``fan_out``) at start and then every purge interval, so they are handled
  by each subscription instead of waiting forever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from eventbus import sql
from eventbus.declaring import registry

log = logging.getLogger("eventbus.backfill")

FAN_OUT_LIMIT = 1000  # events per statement: a short transaction, however many wait


@dataclass(frozen=True)
class Backfilled:
    queue: str
    source: str | None  # None: every other queue of the channel
    count: int
    first_id: int | None
    last_id: int | None

    def __str__(self) -> str:
        if not self.count:
            return f"{self.queue}: nothing to backfill"
        source = self.source or f"the other queues of {registry.base_name(self.queue)}"
        return (
            f"{self.queue}: copied {self.count} event(s) from {source} "
            f"(ids {self.first_id}..{self.last_id})"
        )


def backfill(
    queue: str,
    since: datetime,
    source: str | None = None,
    alias: str = "default",
    until: datetime | None = None,
) -> Backfilled:
    """Copy the channel's changes from `since` (to `until`, default now) that `queue` does
    not hold, read from `source` alone if given, else from every other queue of the
    channel. Raises ValueError for a queue that is not a declared subscription, and for
    an ordered channel (its history would run after newer events of the same keys)."""
    channel = registry.channel(queue)
    if channel is None or queue not in channel.queues or queue == channel.name:
        known = ", ".join(q for c in registry.channels() for q in c.queues if q != c.name)
        raise ValueError(
            f"{queue}: unknown subscription; name a declared one, <channel>:<subscription> "
            f"(declared: {known or 'none'})"
        )
    if channel.ordered:
        raise ValueError(
            f"{queue}: channel {channel.name} is ordered, and copies of its history would run "
            "after newer events of the same keys; backfill is refused for ordered channels"
        )
    if source is not None and registry.base_name(source) != channel.name:
        raise ValueError(f"--backfill-from {source}: not a queue of channel {channel.name}")
    params = {
        "queue": queue,
        "channel": channel.name,
        "source": source,
        "since": since,
        "until": until or timezone.now(),
    }
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(sql.BACKFILL_LOCK, [queue])
        cursor.execute(sql.BACKFILL, params)
        count, first, last = cursor.fetchone()
        if count:
            cursor.execute(*sql.notify_channels([queue]))
    return Backfilled(queue, source, int(count), first, last)


def fan_out(queues: tuple[str, ...], cursor: Any) -> int:
    """Turn the runnable events of each channel-with-subscriptions among `queues` that
    sit under the channel's own name into one event per subscription. Returns how many
    events were fanned out."""
    total = 0
    for channel in {registry.channel(q) for q in queues} - {None}:
        if channel is None or not channel.subscriptions:
            continue
        while True:
            params = {"channel": channel.name, "queues": list(channel.queues)}
            cursor.execute(sql.FAN_OUT, {**params, "limit": FAN_OUT_LIMIT})
            moved, copied = cursor.fetchone()
            if not moved:
                break
            total += moved
            log.info(
                "channel %s: %d event(s) written before it had subscriptions fanned out to "
                "%s (%d events)",
                channel.name,
                moved,
                ", ".join(channel.subscriptions),
                copied,
                extra={"channel": channel.name},
            )
            if moved < FAN_OUT_LIMIT:
                break
    return total
