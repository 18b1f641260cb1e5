"""Collections: the events that one piece of work wrote, followed as one.

Every event records the event whose handler wrote it (``caused_by``) and its
collection (``correlation_id``): the id of its tree's root. The executor sets both while
a handler runs (``eventbus.running.savepoints``), and the event table's column defaults
read them, so events a handler publishes and events triggers write for its writes are
covered alike. A request can open a collection of its own with :func:`collection`, so
that everything one request writes (a post, its tag links) and everything their handlers
then cause is one collection, with one state (``eventbus.operating.status``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections, transaction

from eventbus import sql


@contextmanager
def collection(using: str = "default", join: int | None = None) -> Iterator[int]:
    """A transaction whose events form one collection; yields the collection's id.

    The id is taken from the event table's id sequence, so it never names another
    collection. ``join`` adds the block's events to an existing collection instead (its
    id, or any member's).
    Nested in an outer transaction, the block is a savepoint, and events written after
    it are not in the collection. Use it outside handlers: inside one, events already
    join the handler's collection.
    """
    if join is not None:  # any member's id names its collection
        from eventbus.operating.status import collection_id

        join = collection_id(join, using) or join
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(*sql.open_collection(join))
        opened, previous = cursor.fetchone()
        yield int(opened)
        cursor.execute(*sql.close_collection(previous))
