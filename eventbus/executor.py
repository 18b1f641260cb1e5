"""Claim a batch of events and handle it, all in one transaction.

Each handler call runs in a savepoint of the claiming transaction, and the batch's events
are marked in that same transaction. So a handler's database effects commit exactly once
together with its event's new state, and a worker that dies mid-batch leaves no trace: its
row locks vanish with its connection and the events are claimed again.

After an attempt an event is ``done``, ``failed`` (runs again after a backoff), ``pending``
(a transient database error such as a deadlock: runs again at once) or ``dead`` (no
attempts left, or the handler raised ``GiveUp``); see ``eventbus.retry``.
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

from eventbus import conf, faults, metrics, registry, routing, sql
from eventbus.errors import HandlerTimeout
from eventbus.event import DEAD, DONE, FAILED, Event
from eventbus.policies import Policies
from eventbus.retry import after_attempt
from eventbus.timeouts import Alarm, armed_timer, rearm, time_limit

log = logging.getLogger("eventbus.executor")

MAX_ERROR_CHARS = 8000
# SQLSTATEs that say "try again", not "this event is bad": class 40 (transaction
# rollback: serialization failure, deadlock) and lock_not_available (lock_timeout).
TRANSIENT_SQLSTATE_PREFIXES = ("40", "55P03")


class _ProbeSucceeded(Exception):
    """Raised to roll back a probe's savepoint after its handler succeeded."""


@dataclass(frozen=True, slots=True)
class Outcome:
    event_id: int
    channel: str
    attempt: int
    status: str  # the event's new state: done, failed, pending or dead
    error: str | None
    seconds: float
    retry_in: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == DONE


class Executor:
    """Runs batches for one worker, on the Django connection `alias` (the primary)."""

    def __init__(self, worker_name: str, alias: str = "default") -> None:
        self.worker_name = worker_name
        self.alias = alias
        self.policies = Policies()
        settings = conf.get()
        self.fault_rate, self.fault_seed = settings.FAULT_RATE, settings.FAULT_SEED

    def run_batch(self, scope: sql.Scope, limit: int) -> list[Outcome]:
        """Claim up to `limit` events of `scope`, handle them, commit. Returns the outcomes."""
        connection = connections[self.alias]
        with routing.pinned(self.alias), transaction.atomic(using=self.alias):
            with connection.cursor() as cursor:
                cursor.execute(sql.PIN_CLAIM_PLAN)
                cursor.execute(*sql.claim(scope, limit))
                rows = cursor.fetchall()
                cursor.execute(sql.UNPIN_CLAIM_PLAN)
                events = [Event.from_row(row) for row in rows]
            outcomes = self._handle_all(events)
            self._run_dead_hooks(events, outcomes)
            self._mark(outcomes)
        for outcome in outcomes:  # logged once committed: these are the real state changes
            _log(outcome)
            metrics.observe(outcome.channel, outcome.status, outcome.attempt, outcome.seconds)
        return outcomes

    def _handle_all(self, events: list[Event]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        batches: dict[str, list[Event]] = {}
        shared: list[Event] = []  # per-event handlers of isolation="batch" channels
        for event in events:
            try:
                registration = registry.handler_for(event.channel)
            except registry.UnknownChannel as exc:
                outcomes[event.id] = self._outcome(event, exc, 0.0)
                continue
            if registration.batch:
                batches.setdefault(event.channel, []).append(event)
            elif self.policies[event.channel].isolation == "batch":
                shared.append(event)
            else:
                outcomes[event.id] = self._handle_one(event)
        for channel, group in batches.items():
            outcomes.update(self._handle_group(registry.handler_for(channel).handler, group))
        if shared:
            outcomes.update(self._handle_shared(shared))
        return [outcomes[event.id] for event in events]

    def _handle_shared(self, events: list[Event]) -> dict[int, Outcome]:
        """isolation="batch": one savepoint for all; on any error, redo one by one.

        Two savepoint round trips per event are most of the engine's cost for small
        handlers. Rerunning the batch after a rollback is safe because these handlers'
        effects are all in the database, and the rollback undid them.
        """
        seconds: dict[int, float] = {}
        try:
            with transaction.atomic(using=self.alias), armed_timer():
                for event in events:
                    self._inject_fault(event)
                    handler = registry.handler_for(event.channel).handler
                    rearm(self.policies[event.channel].timeout)
                    started = time.perf_counter()
                    handler(event)
                    seconds[event.id] = time.perf_counter() - started
        except (Exception, Alarm):
            return {event.id: self._handle_one(event) for event in events}
        return {  # all done: no transition to compute
            e.id: Outcome(e.id, e.channel, e.attempt, DONE, None, seconds[e.id]) for e in events
        }

    def _handle_one(self, event: Event) -> Outcome:
        """One event, its handler in its own savepoint."""
        handler = registry.handler_for(event.channel).handler
        error, seconds = self._attempt([event], lambda: handler(event))
        return self._outcome(event, error, seconds)

    def _handle_group(self, handler: Callable[..., Any], group: list[Event]) -> dict[int, Outcome]:
        """Run a batch handler; if it raises, find the bad events and commit the rest together.

        The bad events are found by probing each event alone in a savepoint that is always
        rolled back, so probes keep no row locks; the good ones then run as one call again,
        taking their locks in the handler's own order. (Committing singles one by one would
        take locks in event order, and two workers doing so could deadlock.)
        """
        error, seconds = self._attempt(group, lambda: handler(group))
        if error is None or len(group) == 1:
            return {e.id: self._outcome(e, error, seconds / len(group)) for e in group}
        results: dict[int, Outcome] = {}
        good = []
        for event in group:
            error, seconds = self._attempt([event], lambda e=event: handler([e]), probe=True)
            if error is None:
                good.append(event)
            else:
                results[event.id] = self._outcome(event, error, seconds)
        if good:
            # Each alone succeeds; together they should too. If not, none can be blamed
            # alone: they all take the error and retry.
            error, seconds = self._attempt(good, lambda: handler(good))
            results.update({e.id: self._outcome(e, error, seconds / len(good)) for e in good})
        return results

    def _attempt(
        self,
        events: list[Event],
        call: Callable[[], Any],
        probe: bool = False,
        inject: bool = True,
    ) -> tuple[Exception | None, float]:
        """Run `call` in a savepoint, under the channel's time limit.

        A probe's savepoint is rolled back even when `call` succeeds: only its error counts.
        """
        timeout = self.policies[events[0].channel].timeout
        started = time.perf_counter()
        try:
            with transaction.atomic(using=self.alias), time_limit(timeout):
                for event in events if inject else ():
                    self._inject_fault(event)
                call()
                if probe:
                    raise _ProbeSucceeded
        except _ProbeSucceeded:
            return None, time.perf_counter() - started
        except Alarm:
            error: Exception = HandlerTimeout(f"handler ran longer than {timeout:g} s")
            return error, time.perf_counter() - started
        except Exception as exc:
            return exc, time.perf_counter() - started
        return None, time.perf_counter() - started

    def _inject_fault(self, event: Event) -> None:
        """EVENTBUS_FAULT_RATE: fail this attempt on purpose, before its handler runs."""
        if faults.injected(self.fault_seed, self.fault_rate, event.id, event.attempt):
            raise faults.InjectedFault(f"fault injected into attempt {event.attempt}")

    def _outcome(self, event: Event, error: Exception | None, seconds: float) -> Outcome:
        policy = self.policies[event.channel].retry
        step = after_attempt(event.attempt, error, policy, transient=is_transient(error))
        text = describe(error) if error is not None else None
        return Outcome(
            event.id, event.channel, event.attempt, step.state, text, seconds, step.delay
        )

    def _run_dead_hooks(self, events: list[Event], outcomes: list[Outcome]) -> None:
        for event, outcome in zip(events, outcomes, strict=True):
            hook = registry.dead_hook_for(event.channel) if outcome.status == DEAD else None
            if hook is None:
                continue
            error, _ = self._attempt(
                [event], lambda h=hook, e=event, o=outcome: h(e, o.error), inject=False
            )
            if error is not None:
                log.error(
                    "event %d %s: its on_dead hook failed: %s",
                    event.id,
                    event.channel,
                    describe(error).splitlines()[0],
                )

    def _mark(self, outcomes: list[Outcome]) -> None:
        done = [o.event_id for o in outcomes if o.status == DONE]
        errors = [
            sql.ErrorMark(o.event_id, o.status, o.retry_in, o.error or "")
            for o in outcomes
            if o.status != DONE
        ]
        with connections[self.alias].cursor() as cursor:
            if done:
                cursor.execute(*sql.mark_done(self.worker_name, done))
            if errors:
                cursor.execute(*sql.mark_errors(self.worker_name, errors))


def is_transient(exc: BaseException | None) -> bool:
    """A psycopg error (or Django's wrapper of one) whose SQLSTATE means "try again"."""
    for candidate in (exc, exc.__cause__ if exc is not None else None):
        if isinstance(candidate, psycopg.Error) and candidate.sqlstate:
            return candidate.sqlstate.startswith(TRANSIENT_SQLSTATE_PREFIXES)
    return False


def _log(outcome: Outcome) -> None:
    if not log.isEnabledFor(logging.INFO if outcome.status == DONE else logging.WARNING):
        return
    where = f"event {outcome.event_id} {outcome.channel}"
    extra = {
        "event_id": outcome.event_id,
        "channel": outcome.channel,
        "attempt": outcome.attempt,
        "duration_ms": round(outcome.seconds * 1000, 3),
        "state": outcome.status,
    }
    if outcome.status == DONE:
        log.info(
            "%s: handled in %.1f ms (attempt %d)",
            where,
            outcome.seconds * 1000,
            outcome.attempt,
            extra=extra,
        )
        return
    reason = (outcome.error or "").splitlines()[0]
    if outcome.status == FAILED:
        log.warning(
            "%s: failed (attempt %d), retry in %.1f s: %s",
            where,
            outcome.attempt,
            outcome.retry_in,
            reason,
            extra=extra,
        )
    elif outcome.status == DEAD:
        log.error("%s: dead after attempt %d: %s", where, outcome.attempt, reason, extra=extra)
    else:
        log.warning(
            "%s: deferred after a transient error (attempt %d): %s",
            where,
            outcome.attempt,
            reason,
            extra=extra,
        )


def describe(exc: BaseException) -> str:
    """The error text stored on a failed event: the message first, then where it came from."""
    summary = f"{type(exc).__name__}: {exc}".strip()
    frames = "".join(traceback.format_tb(exc.__traceback__, limit=-5))
    return f"{summary}\n{frames}"[:MAX_ERROR_CHARS]
