"""Handlers read the primary, whatever the project's database routers say.

A project that routes reads to a replica would otherwise have its handlers read rows the
replica has not received yet (the comment exists, the post does not), or outside the
claiming transaction altogether. ``PrimaryForHandlers``, first in ``DATABASE_ROUTERS``,
sends every query a handler makes to the alias the event was claimed on, so no handler
has to say ``using("default")``; outside handlers it has no opinion and the project's
own routers decide. The system check ``eventbus.E001`` insists on its place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.core import checks

ROUTER = "eventbus.PrimaryForHandlers"  # the public path; this module's works too
_PATHS = {ROUTER, "eventbus.integrations.routing.PrimaryForHandlers"}

_claimed_on: ContextVar[str | None] = ContextVar("eventbus_claimed_on", default=None)


@contextmanager
def pinned(alias: str) -> Iterator[None]:
    """Within this block (a claimed batch), every routed query goes to `alias`."""
    token = _claimed_on.set(alias)
    try:
        yield
    finally:
        _claimed_on.reset(token)


class PrimaryForHandlers:
    """A database router: while a batch is handled, reads and writes go to its alias."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return _claimed_on.get()

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return _claimed_on.get()


def _router_path(router: Any) -> str:
    if isinstance(router, str):
        return router
    cls = router if isinstance(router, type) else type(router)
    return f"{cls.__module__}.{cls.__qualname__}"


@checks.register("eventbus")
def check_router_first(**kwargs: Any) -> list[checks.CheckMessage]:
    """With any database router, ours must come first, or handlers may read a replica."""
    routers = [_router_path(r) for r in settings.DATABASE_ROUTERS]
    if not routers or routers[0] in _PATHS:
        return []
    return [
        checks.Error(
            "eventbus handlers could read from a replica: DATABASE_ROUTERS does not start "
            f"with {ROUTER!r}.",
            hint=f"Put {ROUTER!r} first in DATABASE_ROUTERS; it only decides while a "
            "handler runs and leaves every other query to your routers.",
            id="eventbus.E001",
        )
    ]
