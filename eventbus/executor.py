"""Claim a batch of events and handle it, all in one transaction.

Each handler runs in a savepoint of the claiming transaction, and the batch's events are
marked done or failed in that same transaction. So a handler's database effects commit
exactly once together with its event's state, and a worker that dies mid-batch leaves no
trace: its row locks vanish with its connection and the events are claimed again.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

from django.db import connections, transaction

from eventbus import registry, sql
from eventbus.event import Event

log = logging.getLogger("eventbus.executor")

MAX_ERROR_CHARS = 8000


@dataclass(frozen=True, slots=True)
class Outcome:
    event_id: int
    channel: str
    attempt: int
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor:
    """Runs batches for one worker, on the Django connection `alias` (the primary)."""

    def __init__(self, worker_name: str, alias: str = "default") -> None:
        self.worker_name = worker_name
        self.alias = alias

    def run_batch(self, scope: sql.Scope, limit: int) -> list[Outcome]:
        """Claim up to `limit` events of `scope`, handle them, commit. Returns the outcomes."""
        connection = connections[self.alias]
        with transaction.atomic(using=self.alias):
            with connection.cursor() as cursor:
                query, params = sql.claim(scope, limit)
                cursor.execute(query, params)
                rows = cursor.fetchall()
            outcomes = [self._handle(Event.from_row(row)) for row in rows]
            done = [o.event_id for o in outcomes if o.ok]
            failed = [(o.event_id, o.error or "") for o in outcomes if not o.ok]
            with connection.cursor() as cursor:
                if done:
                    cursor.execute(*sql.mark_done(self.worker_name, done))
                if failed:
                    cursor.execute(*sql.mark_failed(self.worker_name, failed))
        for outcome in outcomes:  # logged once committed: these are the real state changes
            if outcome.ok:
                log.info(
                    "event %d %s: handled in %.1f ms (attempt %d)",
                    outcome.event_id,
                    outcome.channel,
                    outcome.seconds * 1000,
                    outcome.attempt,
                )
            else:
                first_line = (outcome.error or "").splitlines()[0]
                log.warning(
                    "event %d %s: failed (attempt %d): %s",
                    outcome.event_id,
                    outcome.channel,
                    outcome.attempt,
                    first_line,
                )
        return outcomes

    def _handle(self, event: Event) -> Outcome:
        started = time.perf_counter()
        try:
            handler = registry.handler_for(event.channel)
            with transaction.atomic(using=self.alias):  # savepoint: undone alone on error
                handler(event)
        except Exception as exc:
            error = describe(exc)
        else:
            error = None
        return Outcome(event.id, event.channel, event.attempt, error, time.perf_counter() - started)


def describe(exc: BaseException) -> str:
    """The error text stored on a failed event: the message first, then where it came from."""
    summary = f"{type(exc).__name__}: {exc}"
    frames = "".join(traceback.format_tb(exc.__traceback__, limit=-5))
    return f"{summary}\n{frames}"[:MAX_ERROR_CHARS]
