"""Which channels this process can handle.

A listener claims only the channels it has a handler for. During a rolling deploy an
older release therefore leaves a newer channel's events pending for the listeners that
know it, instead of making them dead. Each worker's heartbeat row lists its channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core import checks

from eventbus import conf, registry

SETTING = 'EVENTBUS["LISTENER_MODULES"]'


def handled_channels(requested: Sequence[str] | None = None) -> tuple[str, ...]:
    """The channels a listener claims: those requested (default: all declared) with a handler."""
    names = registry.channel_names() if requested is None else requested
    return tuple(sorted({name for name in names if registry.has_handler(name)}))


def missing_handlers(requested: Sequence[str] | None = None) -> list[str]:
    """Requested (default: declared) channels that have no handler in this process."""
    names = registry.channel_names() if requested is None else requested
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
