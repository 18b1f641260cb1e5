"""Pause and resume a channel or one subscription: its events wait, nothing is lost.

An operator pauses a queue whose handler harms something (a mail relay refusing, a
partner's API down) without stopping the listeners, which go on with every other channel.
A pause is a row of ``eventbus_pause``, so it survives restarts and holds across hosts.
Pausing a channel pauses all its subscriptions; resuming it resumes them all, those
paused on their own included.

Listeners read the paused names when they (re)connect, when a pause or resume NOTIFYs
``eventbus_pauses``, and at least once per poll interval while they drain, and leave the
paused queues out of their claims: so a pause takes hold within one poll interval at
most, usually at once. A resume also sends the channel's wake-up, so its waiting events
are drained at once. ``recover`` leaves paused queues alone too, and says so.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections, transaction

from eventbus import sql
from eventbus.declaring import registry

log = logging.getLogger("eventbus.pauses")

NOTIFY_CHANNEL = sql.PAUSES_CHANGED
# A channel, or one subscription's queue of it (`comment_created:email_author`).
NAME = re.compile(r"[a-z][a-z0-9_]*(:[a-z][a-z0-9_]*)?")


@dataclass(frozen=True)
class Pause:
    name: str
    paused_at: datetime
    paused_by: str


def check_name(name: str, alias: str = "default") -> None:
    """Raise ValueError unless `name` is a declared channel or subscription, or a queue
    that events in the table carry (a removed channel's)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"not a channel name: {name!r} (expected {NAME.pattern})")
    if registry.is_declared(name):
        return
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.stored_channels([name]))
        if cursor.fetchall():
            return
    known = sorted({*registry.channel_names(), *registry.queue_names()})
    raise ValueError(
        f"unknown channel {name}: neither declared nor in the event table. "
        f"Declared: {', '.join(known) or '(none)'}"
    )


def pause(name: str, by: str, alias: str = "default") -> bool:
    """Pause `name` (checked first); False if it was paused already. Listeners stop
    claiming its events; they wait."""
    check_name(name, alias)
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(sql.PAUSE, [name, by[:150]])
        added = bool(cursor.fetchall())
        if added:
            cursor.execute(sql.NOTIFY_PAUSES_CHANGED)
    if added:
        log.info("%s paused by %s", name, by, extra={"channel": name})
    return added


def resume(name: str, by: str, alias: str = "default") -> list[str]:
    """Resume `name`, and each subscription of it paused on its own; returns the names
    resumed (none if it was not paused). Wakes the listeners, which drain what waited."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(sql.RESUME, {"name": name})
        resumed = sorted(row[0] for row in cursor.fetchall())
        if resumed:
            cursor.execute(sql.NOTIFY_PAUSES_CHANGED)
            cursor.execute(*sql.notify_channels(resumed))
    if resumed:
        log.info("%s resumed by %s", ", ".join(resumed), by, extra={"channel": name})
    return resumed


def paused(alias: str = "default") -> list[Pause]:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.PAUSED)
        return [Pause(*row) for row in cursor.fetchall()]


def paused_by(queue: str, names: Iterable[str]) -> str | None:
    """Which paused name holds `queue` back: the queue itself, or its channel."""
    held = set(names)
    if queue in held:
        return queue
    channel = queue.split(":", 1)[0]
    return channel if channel in held else None


def without_paused(queues: Iterable[str], names: Iterable[str]) -> tuple[str, ...]:
    held = set(names)
    return tuple(q for q in queues if paused_by(q, held) is None)


class PausedSet:
    """A listener's copy of the paused names, read again when told (a NOTIFY, a new
    connection) or once `interval` seconds have passed since the last read."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.names: frozenset[str] = frozenset()
        self._read_at = -float("inf")
        self._stale = True

    def invalidate(self) -> None:
        self._stale = True

    def due(self) -> bool:
        return self._stale or time.monotonic() - self._read_at >= self.interval

    def refresh(self, cursor: Any) -> bool:
        """Read the paused names; True if they changed."""
        self._read_at, self._stale = time.monotonic(), False
        cursor.execute(sql.PAUSED)
        names = frozenset(row[0] for row in cursor.fetchall())
        changed, self.names = names != self.names, names
        return changed
