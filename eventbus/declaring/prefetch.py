"""Batch the reads of per-event handlers: one loader call per claimed batch, not per event.

A handler that reads the rows its event is about (the post of a comment, its author)
makes one query per event. A worker claims events in batches, so a loader decorated with
`prefetch` is called once with all the events of the batch on the same channel (or
subscription), the first time one of their handlers asks, and every handler of that batch
gets the same result::

    @prefetch
    def posts(events: list[Event]) -> dict[int, Post]:
        return Post.objects.select_related("author").in_bulk(
            {e.new["post_id"] for e in events}
        )

    @comment_created.on
    def email_author(event: Event) -> None:
        post = posts(event).get(event.new["post_id"])

The loader runs inside the first asking handler's savepoint and transaction, on the
claiming connection, so it reads the primary and sees every commit made before it runs.
Its result is kept for that batch only, in memory; a handler that needs what an earlier
handler of the same batch wrote must query for it. Outside a worker (a shell, a test that
calls the handler directly) the loader is called with the one event.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from eventbus.event import Event

T = TypeVar("T")


class _Batch:
    """The events of one claim, by queue, and what loaders made of them."""

    def __init__(self, events: list[Event]) -> None:
        self.by_queue: dict[str, list[Event]] = {}
        for event in events:
            self.by_queue.setdefault(event.queue, []).append(event)
        self.ids = {event.id for event in events}
        self.loaded: dict[tuple[int, str], Any] = {}


_current: contextvars.ContextVar[_Batch | None] = contextvars.ContextVar(
    "eventbus_batch", default=None
)


@contextmanager
def batch(events: list[Event]) -> Iterator[None]:
    """The executor's side: while its handlers run, `events` is the claimed batch."""
    token = _current.set(_Batch(events))
    try:
        yield
    finally:
        _current.reset(token)


class prefetch(Generic[T]):  # a decorator, named as one
    """Decorate ``loader(events) -> result``; call the result with one event."""

    def __init__(self, loader: Callable[[list[Event]], T]) -> None:
        self.loader = loader
        self.__doc__ = loader.__doc__
        self.__name__ = getattr(loader, "__name__", "prefetch")

    def __call__(self, event: Event) -> T:
        current = _current.get()
        if current is None or event.id not in current.ids:
            return self.loader([event])
        key = (id(self), event.queue)
        if key not in current.loaded:
            current.loaded[key] = self.loader(current.by_queue[event.queue])
        result: T = current.loaded[key]
        return result
