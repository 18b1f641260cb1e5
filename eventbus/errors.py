"""Exceptions a handler raises to steer its event, and the engine's own reasons to give up."""

from __future__ import annotations


class RetryLater(Exception):
    """Run this event again later: what it needs is not ready yet (a row not yet visible).

    Counts as an attempt, so an event that is never ready still ends dead, not looping.
    `delay` (seconds) overrides the channel's backoff for this retry.
    """

    def __init__(self, reason: str = "retry requested", delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class GiveUp(Exception):
    """This event can never succeed (bad input): make it dead now, with this reason."""


class RowGone(GiveUp):
    """The row an event needs was deleted before the event ran."""


class MalformedEvent(GiveUp):
    """The event's payload lacks what its handler needs (the model changed since)."""


class UnknownChannel(GiveUp, LookupError):
    """An event names a channel that no handler is registered for."""


class HandlerTimeout(Exception):
    """The handler ran longer than its channel's timeout; counts as a failed attempt."""
