"""Test a project's handlers in its own test suite, inside the test's transaction.

Two tools, both usable in a Django ``TestCase`` (or pytest-django's ``db`` fixture),
where nothing is ever committed:

- `capture_events` collects the events a block of code wrote (channel, operation, key,
  the row as it was and as it became), for asserting that a write makes the events it
  should, and no others;
- `run_events` handles the pending events now, synchronously, through the executor
  that ``listen`` runs: the same claim, one savepoint per handler call, the same retry
  policy and the same state changes (``done``, ``failed``, ``dead``), so a test sees
  what production would.

What differs from ``listen``: no NOTIFY is needed (the events are claimed directly), no
crash ledger is kept (a test process does not crash mid-batch on purpose), and a handler
that leaves the transaction in a state the executor cannot trust raises
`TransactionStateBroken` instead of having its batch rolled back and run again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from django.db import DatabaseError, connections

from eventbus import conf, sql
from eventbus.declaring import registry, wiring
from eventbus.event import Event
from eventbus.running.executor import Executor, Outcome

__all__ = [
    "CapturedEvents",
    "EventsLeftRunning",
    "Outcome",
    "TransactionStateBroken",
    "capture_events",
    "run_events",
]

WORKER_NAME = f"test:{os.getpid()}"


class TransactionStateBroken(AssertionError):
    """A handler left the transaction in a state the executor cannot trust.

    ``listen`` would drop its connection, roll the batch back and run each event alone;
    a test's connection must survive, so the test fails instead, naming the cause.
    """


class EventsLeftRunning(AssertionError):
    """`run_events(retries=True)` found events still runnable after `max_batches` batches."""


class CapturedEvents(list[Event]):
    """The events a block wrote, oldest first; filled when the block ends."""

    def of(self, channel: str) -> list[Event]:
        """The events of `channel`, or of one of its subscriptions (``channel:subscription``)."""
        return [event for event in self if channel in (event.channel, event.queue)]

    def one(self, channel: str) -> Event:
        """The only event of `channel`; fails, listing what was written, if not exactly one."""
        found = self.of(channel)
        if len(found) != 1:
            raise AssertionError(
                f"expected one event of {channel}, got {len(found)}; written: {self.summary()}"
            )
        return found[0]

    def summary(self) -> list[tuple[str, str, str | None]]:
        """(queue, operation, key) of each event: compact to compare in an assert. The queue
        is the channel's name, or ``channel:subscription`` on a channel with subscriptions
        (one event per subscription)."""
        return [(event.queue, event.operation, event.key) for event in self]


@contextlib.contextmanager
def capture_events(using: str | None = None) -> Iterator[CapturedEvents]:
    """Collect the events written inside the block (by triggers or ``publish``).

    ::

        with capture_events() as events:
            Comment.objects.create(post=post, author=reader, body="nice")
        assert events.summary() == [("comment_created", "INSERT", str(post.pk))]
        assert events.one("comment_created").new["body"] == "nice"

    Events are told apart by id, so events written meanwhile by other connections with
    a higher id would be collected too: in a test, nothing else writes.
    """
    alias = using or conf.get().DATABASE_ALIAS
    captured = CapturedEvents()
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.max_id())
        before = int(cursor.fetchone()[0])
    yield captured
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.events_after(before))
        captured.extend(Event.from_row(row) for row in cursor.fetchall())


def run_events(
    channels: Sequence[str] | None = None,
    *,
    retries: bool = False,
    using: str | None = None,
    batch_size: int = 100,
    max_batches: int = 1000,
) -> list[Outcome]:
    """Handle the runnable events now, batch after batch, as ``listen`` would.

    Args:
        channels: only these channels (default: every channel with a handler).
        retries: also run failed events again at once, without waiting for their backoff,
            until each is done or dead (by default a failed event stays failed, as it
            would until its retry is due).
        using: the database alias (default: ``EVENTBUS["DATABASE_ALIAS"]``).

    Returns each attempt's outcome in order: ``event_id``, ``channel``, ``attempt``,
    ``status`` (``done``, ``failed``, ``pending`` or ``dead``), ``error`` and ``ok``.
    """
    alias = using or conf.get().DATABASE_ALIAS
    scope = sql.Scope(
        channels=wiring.handled_channels(channels),
        ordered_channels=tuple(registry.ordered_channel_names()),
        due_only=not retries,
    )
    executor = _TestExecutor(WORKER_NAME, alias)
    outcomes: list[Outcome] = []
    for _ in range(max_batches):
        batch = _run_batch(executor, scope, batch_size)
        if not batch:
            return outcomes
        outcomes += batch
    raise EventsLeftRunning(
        f"events still runnable after {max_batches} batches (a retry policy without a "
        f"last attempt?); outcomes so far: {len(outcomes)}"
    )


def _run_batch(executor: _TestExecutor, scope: sql.Scope, limit: int) -> list[Outcome]:
    """One batch; inside a test's transaction, in a savepoint that undoes a broken batch,
    with Django's bookkeeping put back, so the test fails cleanly and the next one runs."""
    connection = connections[executor.alias]
    if not executor.in_test_transaction:
        return executor.run_batch(scope, limit)
    saved = (list(connection.savepoint_ids), list(connection.atomic_blocks))
    savepoint = connection.savepoint()
    try:
        batch = executor.run_batch(scope, limit)
    except TransactionStateBroken:
        connection.savepoint_ids, connection.atomic_blocks = saved
        connection.in_atomic_block, connection.needs_rollback = True, False
        try:
            connection.savepoint_rollback(savepoint)
            connection.savepoint_commit(savepoint)
        except DatabaseError:  # the connection itself is gone: the test's transaction too
            connection.needs_rollback = True
        raise
    connection.savepoint_commit(savepoint)
    return batch


class _NoCrashLedger:
    """The crash ledger's interface, recording nothing: it writes through a second,
    autocommitted connection, which would see none of a test's uncommitted events."""

    batch = 0

    def started(self, events: Any) -> dict[int, int]:
        return {}

    def forget(self) -> None:
        pass

    def collect_if_due(self) -> None:
        pass

    def close(self) -> None:
        pass


class _TestExecutor(Executor):
    """The executor of ``listen``, minus what a test's single connection cannot take."""

    def __init__(self, worker_name: str, alias: str) -> None:
        super().__init__(worker_name, alias)
        self.ledger = _NoCrashLedger()  # type: ignore[assignment]
        # In a TestCase the claim is a savepoint of the test's transaction, which must
        # survive; with committing tests (transaction=True) it is a transaction of its own.
        self.in_test_transaction = connections[alias].in_atomic_block

    def _discard_connection(self) -> None:
        if not self.in_test_transaction:  # as listen: drop it, run each event alone
            super()._discard_connection()
            return
        raise TransactionStateBroken(
            "a handler left the transaction in a state the executor cannot trust (an "
            "atomic block left open, the connection closed, or a failed query caught "
            "without a savepoint); listen would roll this batch back and run each event "
            "alone. See the exception chained below."
        )
