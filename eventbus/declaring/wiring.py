"""Which channels this process can handle, and which waiting events nobody handles.

A listener claims only the channels it has a handler for. During a rolling deploy an
older release therefore leaves a newer channel's events pending for the listeners that
know it, instead of making them dead. Each worker's heartbeat row lists its channels, so
the coverage report can name the events that no live listener handles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from django.core import checks
from django.db import connections

from eventbus import conf, sql
from eventbus.declaring import registry
from eventbus.running.connections import connection_params

SETTING = 'EVENTBUS["LISTENER_MODULES"]'


def _queues(requested: Sequence[str] | None) -> tuple[str, ...]:
    """Queues named (a channel stands for all its subscriptions); default: all declared."""
    return tuple(registry.queue_names()) if requested is None else registry.expand(requested)


def handled_channels(requested: Sequence[str] | None = None) -> tuple[str, ...]:
    """The queues a listener claims: those requested (default: all declared) with a handler.

    A channel with subscriptions stands for one queue per subscription."""
    names = _queues(requested)
    return tuple(sorted({name for name in names if registry.has_handler(name)}))


def missing_handlers(requested: Sequence[str] | None = None) -> list[str]:
    """Requested (default: declared) queues that have no handler in this process."""
    names = _queues(requested)
    return sorted({name for name in names if not registry.has_handler(name)})


def require_handlers(requested: Sequence[str] | None = None) -> tuple[str, ...]:
    """The channels to handle; raises ValueError, naming the remedy, if any lacks a handler.

    Starting anyway would leave those channels' events pending with nobody to run them,
    which a listener that looks healthy hides for as long as nobody reads the backlog.
    """
    missing = missing_handlers(requested)
    if missing:
        imported = ", ".join(conf.get().LISTENER_MODULES) or "none"
        raise ValueError(
            f"no handler is registered for channel(s) {', '.join(missing)}: add the modules "
            f"that register their handlers to {SETTING} (imported now: {imported}), or "
            "start this listener with --channels naming only the channels it handles"
        )
    handled = handled_channels(requested)
    if not handled:
        raise ValueError(
            f"no channel is declared, so there is nothing to handle: declare channels and "
            f"list the modules that register their handlers in {SETTING}"
        )
    return handled


@checks.register("eventbus")
def check_handlers(**kwargs: Any) -> list[checks.CheckMessage]:
    """`manage.py check` warns about declared channels without a handler."""
    missing = missing_handlers()
    if not missing:
        return []
    return [
        checks.Warning(
            f"declared channels have no handler: {', '.join(missing)}. `listen` refuses "
            "to start without them, and their events wait until a listener handles them.",
            hint=f"Add the modules that register their handlers to {SETTING}, or run "
            "listeners with --channels naming only the channels they handle.",
            id="eventbus.W001",
        )
    ]


@checks.register("eventbus")
def check_channel_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """`manage.py check` warns about EVENTBUS["CHANNELS"] entries that name nothing declared:
    a misspelt name would silently leave the channel with its default timeout and retry."""
    unknown = sorted(name for name in conf.get().CHANNELS if not registry.is_declared(name))
    if not unknown:
        return []
    return [
        checks.Warning(
            f'EVENTBUS["CHANNELS"] names what no channel declares: {", ".join(unknown)}. '
            "Its timeout and retry apply to nothing.",
            hint="Name a declared channel, or one of its subscriptions (channel:subscription). "
            f"Declared: {', '.join(registry.queue_names())}",
            id="eventbus.W002",
        )
    ]


@dataclass(frozen=True)
class Unhandled:
    """Runnable events of a channel that no live listener handles."""

    channel: str
    count: int
    waited: float  # seconds the oldest due one has waited

    def __str__(self) -> str:
        noun = "event" if self.count == 1 else "events"
        return f"channel {self.channel}: {self.count} {noun}, no handler in any running listener"


def live_window() -> float:
    """How recent a heartbeat must be to count: three missed beats, as health's default."""
    return 3 * conf.get().HEALTH_INTERVAL


def unhandled(alias: str = "default", live_within: float | None = None) -> list[Unhandled]:
    """Channels with runnable events that no worker seen within `live_within` s handles."""
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.unhandled_backlog(live_within or live_window()))
        return _rows(cursor.fetchall())


def unhandled_direct(alias: str = "default") -> list[Unhandled]:
    """As `unhandled`, on a short-lived connection of its own (the metrics thread)."""
    params = connection_params(connections[alias])
    with psycopg.connect(connect_timeout=3, **params) as conn:
        return _rows(conn.execute(*sql.unhandled_backlog(live_window())).fetchall())


def _rows(rows: list[tuple[Any, ...]]) -> list[Unhandled]:
    return [Unhandled(channel, int(n), float(waited or 0)) for channel, n, waited in rows]
