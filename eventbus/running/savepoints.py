"""A savepoint per event, in as few round trips as the guarantee allows.

Each handler call runs in a savepoint of the claim transaction, so a failing handler's
database effects are rolled back alone. Done naively that is two round trips per event,
SAVEPOINT and RELEASE, and they were most of a small handler's time (69 %, profiled). So:

- **Releases ride with the next savepoint statement.** A RELEASE is held back and sent
  in one string with the SAVEPOINT (or ROLLBACK TO) that follows it. Any other statement
  first flushes what is held, alone, so a handler's query never rides with it (the
  deadline check sees it as it is). What is still held at the end is released by the
  commit, or discarded with the rollback.
- **A savepoint opens at the handler's first statement.** A handler that sends no query
  through Django's connection (one that sends an email, calls an API, or returns at
  once) has nothing to roll back, and costs no savepoint at all. The savepoint's name
  is on Django's stack from the start, so ``on_commit`` callbacks registered before the
  first query are dropped with a failed attempt, as Django drops them.

**Causation rides along too.** Before a handler's first write that can make an event,
the pipeline sets the transaction-local settings that the event table's defaults read
(``caused_by``, ``correlation_id``), so events that the handler publishes, or that
triggers write for its writes, name their cause. With a per-event savepoint it is sent
in the savepoint's own string. Without one (``isolation="batch"``) it goes ahead of the
handler's first statement, in that statement's own string, where Django binds parameters
on the client (its default with psycopg). Where it binds them on the server, that costs a
round trip, so it is sent only before a statement that can make an event (not a plain
``SELECT``, nor a write to a table with no trigger: ``triggered``, read once per
worker), or when the server still holds another event's cause, so an event never names
the wrong one.

The rule that comes with it: the savepoint opens when a statement passes through
Django's execute wrappers (the ORM, ``cursor.execute``/``executemany``, ``.iterator()``).
A write that does not (``cursor.copy()``, or the raw psycopg connection underneath)
opens none, so if it is the handler's first statement and the handler then fails, it
would not be rolled back. Django's own ``atomic`` opens its savepoint at once; so a
handler that writes that way wraps it in ``transaction.atomic()``, whose SAVEPOINT
opens the event's first.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Collection, Iterator
from typing import Any

import psycopg
from django.db import DatabaseError

from eventbus import sql

SAVEPOINT_SQL = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")
_names = itertools.count(1)
_UNKNOWN = (-1, -1)  # what the server holds after a rollback: send the cause again

# Read by the event table's column defaults (eventbus/migrations/0008_causation.py).
# Two commands that return no rows: the cheapest to carry ahead of a statement.
CAUSE = "SET LOCAL eventbus.caused_by = '{}'; SET LOCAL eventbus.correlation = '{}'"
CAUSE_RESULTS = 2  # results it adds ahead of the statement's own


class Pipeline:
    """An execute wrapper on the claim connection for the length of a claim transaction."""

    def __init__(self, connection: Any, triggered: Collection[str] | None = None) -> None:
        self.connection = connection
        self.triggered = triggered  # tables with triggers; None: any write may make events
        self.held: list[str] = []  # statements to send with the next savepoint statement
        self.lazy: str | None = None  # a savepoint named, to open at the next statement
        self.opened = False  # the current lazy savepoint was opened
        self.wanted = (0, 0)  # (cause, collection) for what handlers write now; 0: none
        self.sent = (0, 0)  # what the server holds: a new transaction holds none

    def caused_by(self, event_id: int | None, collection: int | None) -> None:
        """Events written from now on were caused by `event_id`, in `collection`."""
        self.wanted = (event_id or 0, collection or 0)

    def __call__(
        self, execute: Callable[..., Any], sql_: Any, params: Any, many: bool, ctx: Any
    ) -> Any:
        own = isinstance(sql_, str) and params is None and not many
        if own and sql_.startswith("RELEASE SAVEPOINT "):
            self.held.append(sql_)
            return None
        if own and sql_.startswith("ROLLBACK TO SAVEPOINT "):
            self.sent = _UNKNOWN  # a cause set inside it is undone
        opening, self.lazy = self.lazy, None
        if opening is not None:
            self.held.append(f'SAVEPOINT "{opening}"')
        if self.wanted != self.sent and not (own and sql_.startswith(SAVEPOINT_SQL)):
            rides = not self.held and _rides_along(sql_, many, ctx)
            # Free when it rides along. Otherwise a round trip: sent only where an event
            # may follow, or where the server holds another event's cause (a write that
            # only a function or a cascade turns into an event must never name it).
            if (
                rides
                or opening is not None
                or self.sent != (0, 0)
                or may_make_events(sql_, self.triggered)
            ):
                cause = CAUSE.format(*(n or "" for n in self.wanted))
                self.sent = self.wanted
                if rides:  # in the statement's own string: no round trip
                    result = execute(f"{cause}; {sql_}", params, many, ctx)
                    cursor = ctx["cursor"].cursor
                    for _ in range(CAUSE_RESULTS):
                        cursor.nextset()  # to the statement's own result
                    return result
                self.held.append(cause)
        if not self.held:
            return execute(sql_, params, many, ctx)
        held, self.held = self.held, []
        pending = "; ".join(held)
        if own and sql_.startswith(SAVEPOINT_SQL):  # Django's own, on a plain cursor
            result = execute(f"{pending}; {sql_}", None, False, ctx)
            self._opened(opening)
            return result
        # Alone, on a cursor of its own: the handler's statement then goes as it came
        # (an executemany, a server-side cursor's DECLARE, a query that fails to parse),
        # and the deadline check sees it alone.
        with (
            self.connection.wrap_database_errors,
            psycopg.ClientCursor(self.connection.connection) as cursor,
        ):
            cursor.execute(pending)
        self._opened(opening)
        return execute(sql_, params, many, ctx)

    def _opened(self, sid: str | None) -> None:
        """The lazy savepoint `sid` now exists on the server (set only once it does)."""
        if sid is not None:
            self.opened = True
            self.connection.savepoint_state += 1  # counted as Django counts its own

    def event(self) -> EventSavepoint:
        """One handler call's savepoint, opened at its first statement. Behaves as
        ``transaction.atomic()`` nested in the claim: an exception (or a rollback that
        the handler asked for) undoes the call's effects and its ``on_commit``
        callbacks; the exception propagates."""
        return EventSavepoint(self)

    def _undo(self, sid: str) -> None:
        connection = self.connection
        self.lazy = None
        connection.needs_rollback = False
        connection.run_on_commit = [
            (sids, func, robust)
            for sids, func, robust in connection.run_on_commit
            if sid not in sids
        ]
        if not self.opened:
            return  # no statement ran: nothing to roll back
        self.sent = _UNKNOWN  # a cause set inside the savepoint is undone with it
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'ROLLBACK TO SAVEPOINT "{sid}"')
        except DatabaseError:
            # The connection is gone or out of step: the executor's state check fails
            # the batch, which then runs event by event.
            connection.needs_rollback = True


class EventSavepoint:
    """`Pipeline.event`'s context manager. A class, not a generator: its enter and exit
    run in frames of this module, where a time limit never raises (see
    ``eventbus.running.timeouts``), so Django's savepoint stack always gets its pop."""

    __slots__ = ("pipeline", "sid")

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.sid = f"eventbus_{next(_names)}"

    def __enter__(self) -> None:
        pipeline = self.pipeline
        pipeline.connection.savepoint_ids.append(self.sid)
        pipeline.lazy, pipeline.opened = self.sid, False

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        pipeline, sid = self.pipeline, self.sid
        connection = pipeline.connection
        try:
            if exc_type is not None or connection.needs_rollback:
                pipeline._undo(sid)
            elif pipeline.opened:
                pipeline.held.append(f'RELEASE SAVEPOINT "{sid}"')
        finally:
            pipeline.lazy = None
            if connection.savepoint_ids and connection.savepoint_ids[-1] == sid:
                connection.savepoint_ids.pop()


_NO_EVENTS = ("SELECT", "SHOW", "SAVEPOINT", "RELEASE", "ROLLBACK")
_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_TARGET = re.compile(
    rf"\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(?:ONLY\s+)?(?:{_NAME}\s*\.\s*)?({_NAME})",
    re.IGNORECASE,
)


def may_make_events(statement: Any, triggered: Collection[str] | None) -> bool:
    """Whether a statement can write an event: not a plain ``SELECT``, ``SHOW`` or
    savepoint statement, nor a write to a table outside `triggered`. Anything else
    (a composed statement, ``WITH``, ``COPY``, a function call) counts as one."""
    if not isinstance(statement, str):
        return True
    if statement.lstrip()[:9].upper().startswith(_NO_EVENTS):
        return False
    if triggered is None or (target := _TARGET.match(statement)) is None:
        return True
    name = target.group(1)
    table = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    return table in triggered


_triggered: dict[str, frozenset[str]] = {}  # per database alias


def triggered_tables(connection: Any) -> frozenset[str]:
    """Tables with triggers of any kind (a channel's, or one that may write to such a
    table), and the event table (``publish`` writes it): where a write may make an
    event. Read once per process and database; a migration that adds a trigger is
    deployed with a restart of the listeners."""
    found = _triggered.get(connection.alias)
    if found is None:
        with connection.wrap_database_errors, connection.connection.cursor() as cursor:
            cursor.execute(sql.TRIGGERED_TABLES)
            names = {row[0] for row in cursor.fetchall()}
        found = _triggered[connection.alias] = frozenset(names | {"eventbus_event"})
    return found


def _rides_along(statement: Any, many: bool, ctx: Any) -> bool:
    """Whether a statement can carry another before it in its own string: one plain
    string, on a cursor that binds parameters on the client (Django's default with
    psycopg), which sends it as a simple query that may hold several statements."""
    cursor = getattr(ctx.get("cursor"), "cursor", None)
    return isinstance(statement, str) and not many and isinstance(cursor, psycopg.ClientCursor)


@contextlib.contextmanager
def pipelined(connection: Any, triggered: Collection[str] | None = None) -> Iterator[Pipeline]:
    """Install a `Pipeline` on `connection` for the block (a claim transaction)."""
    pipeline = Pipeline(connection, triggered)
    with connection.execute_wrapper(pipeline):
        yield pipeline
