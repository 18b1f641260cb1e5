"""Handlers read the primary, whatever the project's database routers say; so does any
code in ``read_primary()``.

A project that routes reads to a replica would otherwise have its handlers read rows the
replica has not received yet (the comment exists, the post does not), or outside the
claiming transaction altogether. ``PrimaryForHandlers``, first in ``DATABASE_ROUTERS``,
sends every query a handler makes to the alias the event was claimed on, so no handler
has to say ``using("default")``; outside handlers it has no opinion and the project's
own routers decide. The system check ``eventbus.E001`` insists on its place.

A view has the same problem right after a write: the row it just wrote, or the one a
client wrote a moment ago, is not on the replica yet. ``read_primary()`` pins a block, a
function or a view to the primary through the same router, so a project says which reads
must see the latest state and leaves the others to its routers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, overload

from django.conf import settings
from django.core import checks

ROUTER = "eventbus.PrimaryForHandlers"  # the public path; this module's works too
_PATHS = {ROUTER, "eventbus.integrations.routing.PrimaryForHandlers"}

# The alias every routed query goes to, while a batch is handled or a read_primary() runs.
_pinned_to: ContextVar[str | None] = ContextVar("eventbus_pinned_to", default=None)

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def pinned(alias: str) -> Iterator[None]:
    """Within this block (a claimed batch), every routed query goes to `alias`."""
    token = _pinned_to.set(alias)
    try:
        yield
    finally:
        _pinned_to.reset(token)


# The pins `read_primary` blocks set, innermost last: per thread and per task, so one
# `read_primary()` object may be entered by several at once.
_entered: ContextVar[tuple[Token[str | None], ...]] = ContextVar(
    "eventbus_read_primary_entered", default=()
)


class ReadPrimary:
    """``read_primary()``: a context manager and a decorator (sync or async functions)."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def alias(self) -> str:
        """`using`; else, inside a handler, the claim's alias; else eventbus's primary."""
        if self.using is not None:
            return self.using
        if (current := _pinned_to.get()) is not None:
            return current
        from eventbus import conf  # late: settings may not be ready at decoration time

        return conf.get().DATABASE_ALIAS

    def __enter__(self) -> None:
        token = _pinned_to.set(self.alias())
        _entered.set((*_entered.get(), token))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        *outer, token = _entered.get()
        _entered.set(tuple(outer))
        _pinned_to.reset(token)

    def __call__(self, func: F) -> F:
        # A fresh instance per call: one decorated view runs in many threads at once.
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def pinned_async(*args: Any, **kwargs: Any) -> Any:
                with ReadPrimary(self.using):
                    return _rendered(await func(*args, **kwargs))

            return pinned_async  # type: ignore[return-value]

        @functools.wraps(func)
        def pinned_sync(*args: Any, **kwargs: Any) -> Any:
            with ReadPrimary(self.using):
                return _rendered(func(*args, **kwargs))

        return pinned_sync  # type: ignore[return-value]


def _rendered(response: Any) -> Any:
    """A view's template response, rendered now, inside the block: its lazy querysets
    (a generic view's ``object_list``) would otherwise run after it, on the replica."""
    if callable(getattr(response, "render", None)) and response.is_rendered is False:
        response.render()
    return response


@overload
def read_primary(using: F) -> F: ...
@overload
def read_primary(using: str | None = None) -> ReadPrimary: ...
def read_primary(using: Any = None) -> Any:
    """Reads in this block, function or view go to the primary, not a replica.

    For reads that must see the latest state: a row this request (or a client, a moment
    ago) just wrote, a status URL polled right after a 202. Like ``transaction.atomic``::

        @read_primary
        def view(request): ...

        with read_primary():
            author = User.objects.get(username=name)

    The primary is ``EVENTBUS["DATABASE_ALIAS"]`` ("default"), or `using`. Every query
    the routers place (no ``using()`` of its own) goes there, writes too, through
    ``eventbus.PrimaryForHandlers``, which must be first in ``DATABASE_ROUTERS`` (the
    check ``eventbus.E001``). Without routers every query reads the default database
    anyway. Inside a handler the claim's alias stays.
    """
    if callable(using):
        return ReadPrimary()(using)
    return ReadPrimary(using)


class PrimaryForHandlers:
    """A database router: while a batch is handled (or a ``read_primary()`` runs), reads
    and writes go to its alias; otherwise no opinion."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return _pinned_to.get()

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return _pinned_to.get()


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
            "handler (or a read_primary() block) runs and leaves every other query to "
            "your routers.",
            id="eventbus.E001",
        )
    ]
