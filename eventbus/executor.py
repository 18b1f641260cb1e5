"""Claim a batch of events and handle it, all in one transaction.

Each handler call runs in a savepoint of the claiming transaction, and the batch's events
are marked in that same transaction. So a handler's database effects commit exactly once
together with its event's state, and a worker that dies mid-batch leaves no trace: its row
locks vanish with its connection and the events are claimed again.

Outcomes: ``done``; ``failed`` (the handler raised; the error is kept); ``deferred`` (a
transient database error such as a deadlock: the event stays pending and runs again).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import connections, transaction

from eventbus import registry, sql
from eventbus.event import DONE, FAILED, PENDING, Event

log = logging.getLogger("eventbus.executor")

MAX_ERROR_CHARS = 8000
DEFERRED = "deferred"
# Errors that say "try again", not "this event is bad": the event stays pending.
TRANSIENT = (psycopg.errors.TransactionRollback, psycopg.errors.LockNotAvailable)


@dataclass(frozen=True, slots=True)
class Outcome:
    event_id: int
    channel: str
    attempt: int
    status: str  # DONE, FAILED or DEFERRED
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == DONE


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
                cursor.execute(*sql.claim(scope, limit))
                events = [Event.from_row(row) for row in cursor.fetchall()]
            outcomes = self._handle_all(events)
            self._mark(outcomes)
        for outcome in outcomes:  # logged once committed: these are the real state changes
            _log(outcome)
        return outcomes

    def _handle_all(self, events: list[Event]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        batches: dict[str, list[Event]] = {}
        for event in events:
            try:
                registration = registry.handler_for(event.channel)
            except registry.UnknownChannel as exc:
                outcomes[event.id] = _outcome(event, exc, 0.0)
                continue
            if registration.batch:
                batches.setdefault(event.channel, []).append(event)
            else:
                handler = registration.handler
                error, seconds = self._attempt(lambda h=handler, e=event: h(e))
                outcomes[event.id] = _outcome(event, error, seconds)
        for channel, group in batches.items():
            outcomes.update(self._handle_group(registry.handler_for(channel).handler, group))
        return [outcomes[event.id] for event in events]

    def _handle_group(self, handler: Callable[..., Any], group: list[Event]) -> dict[int, Outcome]:
        error, seconds = self._attempt(lambda: handler(group))
        if error is None or len(group) == 1:
            return {e.id: _outcome(e, error, seconds / len(group)) for e in group}
        # Some event in the group is bad: run them one by one to fail only that one.
        results = {}
        for event in group:
            error, seconds = self._attempt(lambda e=event: handler([e]))
            results[event.id] = _outcome(event, error, seconds)
        return results

    def _attempt(self, call: Callable[[], Any]) -> tuple[Exception | None, float]:
        started = time.perf_counter()
        try:
            with transaction.atomic(using=self.alias):  # savepoint: undone alone on error
                call()
        except Exception as exc:
            return exc, time.perf_counter() - started
        return None, time.perf_counter() - started

    def _mark(self, outcomes: list[Outcome]) -> None:
        done = [o.event_id for o in outcomes if o.status == DONE]
        errors = [
            (o.event_id, FAILED if o.status == FAILED else PENDING, o.error or "")
            for o in outcomes
            if o.status != DONE
        ]
        with connections[self.alias].cursor() as cursor:
            if done:
                cursor.execute(*sql.mark_done(self.worker_name, done))
            if errors:
                cursor.execute(*sql.mark_errors(self.worker_name, errors))


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) or isinstance(exc.__cause__, TRANSIENT)


def _outcome(event: Event, error: Exception | None, seconds: float) -> Outcome:
    if error is None:
        return Outcome(event.id, event.channel, event.attempt, DONE, None, seconds)
    status = DEFERRED if is_transient(error) else FAILED
    return Outcome(event.id, event.channel, event.attempt, status, describe(error), seconds)


def _log(outcome: Outcome) -> None:
    if outcome.status == DONE:
        log.info(
            "event %d %s: handled in %.1f ms (attempt %d)",
            outcome.event_id,
            outcome.channel,
            outcome.seconds * 1000,
            outcome.attempt,
        )
        return
    first_line = (outcome.error or "").splitlines()[0]
    verb = "failed" if outcome.status == FAILED else "deferred (transient, will run again)"
    log.warning(
        "event %d %s: %s (attempt %d): %s",
        outcome.event_id,
        outcome.channel,
        verb,
        outcome.attempt,
        first_line,
    )


def describe(exc: BaseException) -> str:
    """The error text stored on a failed event: the message first, then where it came from."""
    summary = f"{type(exc).__name__}: {exc}".strip()
    frames = "".join(traceback.format_tb(exc.__traceback__, limit=-5))
    return f"{summary}\n{frames}"[:MAX_ERROR_CHARS]
