"""Claim a batch of events and handle it, all in one transaction, containing every fault.

Each handler call runs in a savepoint of the claiming transaction, and the batch's events
are marked in that same transaction. So a handler's database effects commit exactly once
together with its event's new state, and a worker that dies mid-batch leaves no trace in
the event table: its row locks vanish with its connection and the events are claimed again.

What is in a batch never takes the worker down:
- error text is cleaned before it is stored (``eventbus.running.errortext``);
- if marking a batch fails, or the connection's transaction state is no longer known
  (say a timeout fired inside Django's own savepoint code), the batch is rolled back, the
  connection dropped, and each of its events runs again alone, in its own transaction; an
  event whose outcome still cannot be recorded is made dead with the reason;
- a worker that dies while handling is recorded in the crash ledger (``eventbus.running.ledger``);
  events with an unfinished start run alone, and one that was in flight at
  ``CRASH_LIMIT`` deaths is made dead without running again.

A claim transaction stays short: it stops taking new events from its batch after
``BATCH_TIME_BUDGET`` seconds, at ``MAX_SAVEPOINTS`` savepoints, or when the worker is
asked to stop, commits what it finished, and leaves the rest pending. Payloads larger than
the batch's share of ``PAYLOAD_BUDGET`` are fetched one event at a time.

After an attempt an event is ``done``, ``failed`` (runs again after a backoff), ``pending``
(a transient database error: runs again after a short backoff) or ``dead``; see
``eventbus.declaring.retry``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from django.db import connections, transaction

from eventbus import conf, sql
from eventbus.declaring import prefetch as prefetching
from eventbus.declaring import registry, wiring
from eventbus.declaring.policies import Policies
from eventbus.declaring.retry import after_attempt
from eventbus.errors import HandlerTimeout, MalformedEvent
from eventbus.event import DEAD, DONE, FAILED, Event, decode_payloads
from eventbus.integrations import alerts, routing, tracing
from eventbus.operating import metrics, rollup
from eventbus.running import faults, followers
from eventbus.running.errortext import describe, first_line
from eventbus.running.ledger import CrashLedger, LedgerUnavailable, SideConnection
from eventbus.running.liveness import Liveness
from eventbus.running.quarantine import Quarantine
from eventbus.running.savepoints import SAVEPOINT_SQL, Pipeline, pipelined, triggered_tables
from eventbus.running.timeouts import Deadline, loop_limit, time_limit

from_row = Event.from_row
log = logging.getLogger("eventbus.executor")

# SQLSTATEs that say "try again", not "this event is bad": class 40 (transaction
# rollback: serialization failure, deadlock) and lock_not_available (lock_timeout).
TRANSIENT_SQLSTATE_PREFIXES = ("40", "55P03")
IDLE_GRACE_MS = 30_000  # idle_in_transaction_session_timeout beyond the longest handler


class _ProbeSucceeded(Exception):
    """Raised to roll back a probe's savepoint after its handler succeeded."""


class _RunAlone(Exception):
    """The claimed batch holds events with unfinished starts: run each alone instead."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(f"{len(ids)} event(s) to run alone")
        self.ids = ids


class TransactionStateUnknown(Exception):
    """Django's view of the claim transaction no longer matches the server's."""


class BatchFailed(Exception):
    """A batch could not be committed for a reason other than a lost connection."""

    def __init__(self, ids: list[int], cause: BaseException) -> None:
        super().__init__(first_line(describe(cause)))
        self.ids = ids
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Outcome:
    event_id: int
    channel: str
    attempt: int
    status: str  # the event's new state: done, failed, pending or dead
    error: str | None
    seconds: float
    retry_in: float = 0.0
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.status == DONE


class Budget:
    """When a claim transaction stops taking new events from its batch."""

    def __init__(self, connection: Any, seconds: float, savepoints: int, stop: Callable[[], bool]):
        self.connection = connection
        self.deadline = time.monotonic() + seconds if seconds > 0 else math.inf
        self.savepoints = savepoints
        self.base = connection.savepoint_state
        self.stop = stop

    def savepoints_used(self) -> int:
        return self.connection.savepoint_state - self.base

    def exhausted(self) -> bool:
        if self.stop() or time.monotonic() >= self.deadline:
            return True
        return bool(self.savepoints) and self.savepoints_used() >= self.savepoints


class Executor:
    """Runs batches for one worker, on the Django connection `alias` (the primary)."""

    def __init__(
        self,
        worker_name: str,
        alias: str = "default",
        should_stop: Callable[[], bool] = lambda: False,
        liveness: Liveness | None = None,
        slot: int | None = None,
        side: SideConnection | None = None,
    ) -> None:
        """`slot`: this executor is one of a process's handler slots (threads); its crash
        ledger rows are then its own, written through the process's shared `side`."""
        self.worker_name = worker_name
        self.alias = alias
        self.should_stop = should_stop
        self.liveness = liveness or Liveness()
        self.policies = Policies()
        self.settings = settings = conf.get()
        self.fault_rate, self.fault_seed = settings.FAULT_RATE, settings.FAULT_SEED
        ledger_name = worker_name if slot is None else f"{worker_name}#{slot}"
        self.ledger = CrashLedger(ledger_name, alias, side)
        self.writer = ledger_name  # its own rows in the dashboard's rollup
        self._pins: dict[int, Any] = {}
        self.unstarted: list[int] = []  # claimed by the last batch but left pending
        self._baseline: tuple[Any, ...] = ()  # Django's bookkeeping inside the claim
        self._forget_pending = False  # a start lost with its connection, to take back
        self._lazy: set[int] = set()  # this batch's events whose payload was left out
        options = connections[alias].settings_dict.get("OPTIONS") or {}
        self._client_binding = not options.get("server_side_binding")
        self._transients: dict[int, int] = {}  # this batch's events' transient errors so far
        self._fits = 2**31  # events the last claim transaction could handle (see _claim_size)
        self.on_full_claim: Callable[[], None] = lambda: None
        self._pipeline: Pipeline | None = None  # the claim transaction's savepoints
        self.quarantine: Quarantine | None = None  # handler slots: suspects run alone
        self._announced = False  # the last claim transaction told followers (see _mark)
        # Optional integrations: None when off, checked once per batch, never per event.
        self.tracing = tracing.handler_tracer(settings)
        self.alerts = alerts.dead_alerts(settings, alias)

    # --- A batch ---------------------------------------------------------------------

    def run_batch(self, scope: sql.Scope, limit: int) -> list[Outcome]:
        """Claim up to `limit` events of `scope`, handle them, commit. Returns the outcomes.

        Events left unstarted (a stop, the time or savepoint budget) have no outcome and
        are pending again once this returns.
        """
        self.unstarted = []
        if self.should_stop():  # asked to stop: claim nothing more
            return []
        try:
            outcomes = self._run(scope, limit)
        except _RunAlone as request:
            outcomes = self._run_each_alone(scope, request.ids)
        except BatchFailed as failure:
            log.warning(
                "worker %s: a batch of %d event(s) could not be committed (%s); running each alone",
                self.worker_name,
                len(failure.ids),
                failure,
            )
            outcomes = self._run_each_alone(scope, failure.ids)
        for outcome in outcomes:  # logged once committed: these are the real state changes
            _log(outcome)
            metrics.observe(outcome.channel, outcome.status, outcome.attempt, outcome.seconds)
        if self.alerts is not None and outcomes:  # committed: newly dead events may alert
            self.alerts.after_commit(outcomes)
        return outcomes

    def idle(self) -> None:
        """The worker found nothing to do: tidy the crash ledger."""
        self.ledger.collect_if_due()

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.ledger.forget()
        self.ledger.close()

    def _run(self, scope: sql.Scope, limit: int) -> list[Outcome]:
        """One claim transaction. Raises `_RunAlone` or `BatchFailed` (rolled back)."""
        connection = connections[self.alias]
        requested, limit = limit, self._claim_size(scope, limit)
        inline = max(1, self.settings.PAYLOAD_BUDGET // max(limit, 1))
        claims: list[Event] = []
        rows: list[Any] = []
        recorded = False  # the crash ledger holds a start for this batch
        raw = None  # the psycopg connection the claim ran on
        if self._forget_pending:
            self._forget_lost_start()
        handling = contextlib.ExitStack()  # the slots' quarantine, held while handlers run
        try:
            with routing.pinned(self.alias), transaction.atomic(using=self.alias), handling:
                self._baseline = _bookkeeping(connection)
                with connection.cursor() as cursor:
                    raw = connection.connection
                    rows = self._claim_rows(cursor, scope, limit, inline)
                claims, undecodable = _events(rows)
                # what the claim learnt besides the events, for the few it concerns
                self._lazy = {row[0] for row in rows if row[11]}
                self._transients = {row[0]: row[12] for row in rows if row[12]}
                if not rows:
                    return []
                if len(rows) >= limit:
                    self.on_full_claim()  # more may be due: handler slots bring in another
                ids = [row[0] for row in rows]
                starts = [(row[0], row[8]) for row in rows]  # (id, attempts so far)
                suspects: dict[int, int] = {}
                if self.quarantine is not None:
                    # A suspect's start is never on record while other slots of this
                    # process run handlers: ask first, then take the quarantine's lock.
                    suspects = self.ledger.peek(starts)
                    if suspects and len(rows) > 1:
                        raise _RunAlone(ids)  # nothing recorded; each runs alone now
                    lock = self.quarantine.exclusive if suspects else self.quarantine.shared
                    handling.enter_context(lock(self.liveness.beat))
                unfinished = self.ledger.started(starts)
                recorded = True
                if unfinished and len(rows) > 1:
                    self.ledger.forget()  # this start never happened: each runs alone now
                    raise _RunAlone(ids)  # rolls the claim back; no handler has run
                if unfinished and self.quarantine is not None and not suspects:
                    # It became a suspect since the question (a death just now).
                    self.ledger.forget()
                    handling.close()
                    handling.enter_context(self.quarantine.exclusive(self.liveness.beat))
                    unfinished = self.ledger.started(starts)
                with pipelined(connection, triggered_tables(connection)) as self._pipeline:
                    try:
                        if claims and unfinished.get(ids[0], 0) >= self.settings.CRASH_LIMIT:
                            # The start just recorded stays: if the on_dead hook kills the
                            # worker too, the next claim knows, and skips the hook.
                            outcomes = [self._crashed(claims[0], unfinished[ids[0]])]
                        else:
                            outcomes = self._handle_all(claims, connection)
                            outcomes += self._bury_undecodable(undecodable)
                            self._check_state()
                        # The marks make no event: no cause for them (none is sent if
                        # no handler wrote), and none outlives the claim (run_events runs
                        # in a test's own transaction).
                        self._pipeline.caused_by(None, None)
                        self._mark(outcomes, scope.states)
                    finally:
                        self._pipeline = None
        except (_RunAlone, LedgerUnavailable):
            raise
        except BaseException as exc:
            lost = raw is not None and raw.broken  # by the server or the network
            if recorded and lost:
                # The connection died, not the worker: this start says nothing about the
                # events (a restarted database, a terminated backend). Take it back, now
                # or before the next claim if the ledger's connection died too.
                self._forget_pending = True
                with contextlib.suppress(LedgerUnavailable):
                    self._forget_lost_start()
            if not rows or lost:
                raise  # nothing ran, or the connection is gone: the worker reconnects
            self._discard_connection()
            raise BatchFailed([row[0] for row in rows], exc) from exc
        if not self._announced and followers.watched:  # a follower came during the commit
            self._announce()
        handled = {o.event_id for o in outcomes}
        self.unstarted = [i for i in ids if i not in handled]
        self._learn_fit(requested, len(ids), len(handled))
        if self.unstarted and recorded:  # cut short: the rest never started
            self.ledger.forget()
        return outcomes

    def _run_each_alone(self, scope: sql.Scope, ids: list[int]) -> list[Outcome]:
        """Each event in its own claim transaction; one that cannot be marked is made dead."""
        outcomes: list[Outcome] = []
        for n, event_id in enumerate(ids):
            if self.should_stop():
                self.unstarted = ids[n:]
                break
            alone = replace(scope, ids=(event_id,))
            try:
                outcomes += self._run(alone, 1)
            except BatchFailed as failure:
                outcomes += self._bury(alone, failure)
        return outcomes

    def _bury(self, scope: sql.Scope, failure: BatchFailed) -> list[Outcome]:
        """Make an event dead whose outcome could not be recorded, with the reason."""
        reason = f"could not record this event's outcome: {failure}"
        with transaction.atomic(using=self.alias), connections[self.alias].cursor() as cursor:
            cursor.execute(*sql.claim(scope, 1))
            rows = cursor.fetchall()
            if not rows:
                return []  # another worker holds it, or it is no longer runnable
            row = rows[0]  # not decoded: its payload may be what could not be recorded
            outcome = Outcome(row[0], row[1], row[8] + 1, DEAD, reason, 0.0)
            mark = sql.ErrorMark(row[0], DEAD, 0, reason)
            counted = rollup.rows([outcome], self.writer) if self.settings.ROLLUP else None
            cursor.execute(*sql.mark_errors(self.worker_name, [mark], counted, scope.states))
            if followers.watched:
                cursor.execute(sql.NOTIFY_CHANGES)
        return [outcome]

    def _bury_undecodable(self, undecodable: list[tuple[Event, MalformedEvent]]) -> list[Outcome]:
        """Dead, each with its reason; their on_dead hooks run, given the event without
        its payload (as a chain's end is given it)."""
        outcomes = []
        for event, error in undecodable:
            outcome = self._outcome(event, error, 0.0)
            if outcome.status == DEAD:
                self._run_dead_hook(event, outcome.error or "")
            outcomes.append(outcome)
        return outcomes

    def _crashed(self, event: Event, deaths: int) -> Outcome:
        limit = self.settings.CRASH_LIMIT
        reason = f"worker died while handling this event {min(deaths, limit)} times"
        if deaths > limit:  # the on_dead hook itself killed the worker: not again
            reason += "; its on_dead hook was skipped (the worker died running it)"
        else:
            with contextlib.suppress(MalformedEvent):  # else with the payload it has
                event = self._with_payload(event)
            self._run_dead_hook(event, reason)
        error = _WorkerDied(reason)
        return Outcome(event.id, event.queue, event.attempt, DEAD, describe(error), 0.0)

    def _forget_lost_start(self) -> None:
        self.ledger.forget()
        self._forget_pending = False

    # --- Handling ----------------------------------------------------------------------

    def _handle_all(self, claims: list[Event], connection: Any) -> list[Outcome]:
        budget = Budget(
            connection,
            self.settings.BATCH_TIME_BUDGET,
            self.settings.MAX_SAVEPOINTS,
            self.should_stop,
        )
        outcomes: dict[int, Outcome] = {}
        groups: dict[str, list[Event]] = {}
        shared: list[Event] = []  # per-event handlers of isolation="batch" channels
        singles: list[Event] = []
        for claim in claims:
            channel = claim.queue
            try:
                registration = registry.handler_for(channel)
            except registry.UnknownChannel:
                _warn_unhandled(channel)  # left pending for a listener that handles it
                continue
            if registration.batch:
                groups.setdefault(channel, []).append(claim)
            elif self.policies[channel].isolation == "batch":
                shared.append(claim)
            else:
                singles.append(claim)
        tracer = self.tracing
        if tracer is not None:
            tracer.load(connection, [e.id for e in claims])
        # what `prefetch` loaders get: the batch's events whose payloads it holds
        with prefetching.batch([e for e in claims if e.id not in self._lazy]):
            if singles:  # always inside the claim's pipeline (see _run)
                outcomes.update(
                    self._handle_singles(singles, budget)
                    if tracer is None
                    else self._handle_traced(tracer, singles, budget)
                )
            for channel, group in groups.items():
                if outcomes and budget.exhausted():
                    break
                handler = registry.handler_for(channel).handler
                if tracer is None:
                    outcomes.update(self._handle_group(handler, group, budget))
                    continue
                with tracer.span(group) as span:
                    handled = self._handle_group(handler, group, budget)
                    span.record(handled.values())
                outcomes.update(handled)
            if shared and not (outcomes and budget.exhausted()):
                outcomes.update(
                    self._handle_shared(shared, budget)
                    if tracer is None
                    else self._handle_traced(tracer, shared, budget)
                )
        return [outcomes[e.id] for e in claims if e.id in outcomes]

    def _handle_traced(
        self, tracer: tracing.HandlerTracer, claims: list[Event], budget: Budget
    ) -> dict[int, Outcome]:
        """With tracing on: each per-event handler in its own span and its own savepoint
        (``isolation="batch"`` too, so a span's outcome is the one that commits), by
        `_handle_one`, the path ``_handle_singles`` is the unrolled form of."""
        outcomes: dict[int, Outcome] = {}
        for claim in claims:
            if outcomes and budget.exhausted():
                break
            with tracer.span([claim]) as span:
                outcome = outcomes[claim.id] = self._handle_one(claim)
                span.record([outcome])
        return outcomes

    def _handle_shared(self, claims: list[Event], budget: Budget) -> dict[int, Outcome]:
        """isolation="batch": one savepoint for all; on any error, redo one by one.

        Two savepoint round trips per event are most of the engine's cost for small
        handlers. Rerunning the batch after a rollback is safe because these handlers'
        effects are all in the database, and the rollback undid them.
        """
        seconds: dict[int, float] = {}
        taken: list[Event] = []
        lazy = self._lazy
        policies, liveness, perf_counter = self.policies, self.liveness, time.perf_counter
        pipeline = self._pipeline
        inject = self._inject_fault if self.fault_rate > 0 else None
        try:
            with transaction.atomic(using=self.alias), self._loop_limit() as limit:
                for claim in claims:
                    if taken and budget.exhausted():
                        break
                    event = self._with_payload(claim) if lazy and claim.id in lazy else claim
                    timeout = policies[event.queue].timeout
                    liveness.busy(timeout)
                    started = perf_counter()
                    if pipeline is not None:  # see _cause
                        pipeline.caused_by(event.id, event.collection)
                    limit.rearm(timeout)
                    if inject is not None:
                        inject(event)
                    registry.handler_for(event.queue).handler(event)
                    if limit.fired:
                        raise Deadline
                    limit.rearm(None)
                    seconds[event.id] = perf_counter() - started
                    taken.append(claim)
        except BaseException as exc:  # whatever a handler raises: redo one by one
            _release_frames(exc)
            del exc
            self.liveness.idle()
            self._check_state()
            results: dict[int, Outcome] = {}
            for claim in claims:
                if results and budget.exhausted():
                    break
                results[claim.id] = self._handle_one(claim)
            return results
        self.liveness.idle()
        return {  # all done: no transition to compute
            e.id: Outcome(e.id, e.queue, e.attempt, DONE, None, seconds[e.id]) for e in taken
        }

    def _handle_singles(self, claims: list[Event], budget: Budget) -> dict[int, Outcome]:
        """Per-event handlers, each in its own (lazy) savepoint, under one time limit
        re-armed per call: the per-call cost of `_handle_one` without its context
        managers. On-dead hooks run after the loop, each under its own limit."""
        assert self._pipeline is not None
        pipeline, policies, liveness = self._pipeline, self.policies, self.liveness
        perf_counter, check_state = time.perf_counter, self._check_state
        connection = connections[self.alias]
        outcomes: dict[int, Outcome] = {}
        dying: list[tuple[Event, Outcome]] = []
        with self._loop_limit() as limit:
            for claim in claims:
                if outcomes and budget.exhausted():
                    break
                try:
                    event = self._with_payload(claim)
                except MalformedEvent as exc:  # its payload cannot be decoded: no handler
                    outcome = outcomes[claim.id] = self._outcome(claim, exc, 0.0)
                    if outcome.status == DEAD:
                        dying.append((claim, outcome))
                    continue
                handler = registry.handler_for(event.queue).handler
                timeout = policies[event.queue].timeout
                error: BaseException | None = None
                fired = False
                liveness.busy(timeout)
                started = perf_counter()
                pipeline.caused_by(event.id, event.collection)
                try:
                    with pipeline.event():
                        try:
                            limit.rearm(timeout)
                            self._inject_fault(event)
                            handler(event)
                        except BaseException as exc:
                            _release_frames(exc)
                            raise
                        finally:
                            fired = limit.fired
                            limit.rearm(None)  # a late Deadline lands in this try
                except BaseException as exc:  # whatever a handler raises: its event's error
                    error = exc
                seconds = perf_counter() - started
                liveness.idle()
                check_state(connection)
                if error is None:  # the common case: no transition to compute
                    outcomes[event.id] = Outcome(
                        event.id, event.queue, event.attempt, DONE, None, seconds
                    )
                    continue
                if fired or isinstance(error, Deadline):
                    error = HandlerTimeout(f"handler ran longer than {timeout:g} s")
                outcome = outcomes[event.id] = self._outcome(event, error, seconds)
                if outcome.status == DEAD:
                    dying.append((event, outcome))
        for event, outcome in dying:
            self._run_dead_hook(event, outcome.error or "")
        return outcomes

    def _handle_one(self, claim: Event) -> Outcome:
        """One event, its handler in its own savepoint; its on_dead hook if it dies."""
        try:
            event = self._with_payload(claim)
        except MalformedEvent as exc:  # its payload cannot be decoded: no handler runs
            return self._bury_undecodable([(claim, exc)])[0]
        handler = registry.handler_for(event.queue).handler
        error, seconds = self._attempt([event], lambda: handler(event), lazy=True)
        outcome = self._outcome(event, error, seconds)
        if outcome.status == DEAD:
            self._run_dead_hook(event, outcome.error or "")
        return outcome

    def _handle_group(
        self, handler: Callable[..., Any], claims: list[Event], budget: Budget
    ) -> dict[int, Outcome]:
        """Run a batch handler; if it raises, find the bad events and commit the rest together.

        The bad events are found by probing each event alone in a savepoint that is always
        rolled back, so probes keep no row locks; the good ones then run as one call again,
        taking their locks in the handler's own order. (Committing singles one by one would
        take locks in event order, and two workers doing so could deadlock.)
        """
        group, failed = self._with_payloads(claims)
        results = {  # payloads that cannot be decoded: no handler runs
            o.event_id: o
            for o in self._bury_undecodable([(e, failed[e.id]) for e in claims if e.id in failed])
        }
        if not group:
            return results
        error, seconds = self._attempt(group, lambda: handler(group))
        if error is None or len(group) == 1:
            return {**results, **self._group_outcomes(group, error, seconds)}
        good = []
        for event in group:
            if budget.exhausted():
                break
            error, seconds = self._attempt([event], lambda e=event: handler([e]), probe=True)
            if error is None:
                good.append(event)
            else:
                results.update(self._group_outcomes([event], error, seconds))
        if good:
            # Each alone succeeds; together they should too. If not, none can be blamed
            # alone: they all take the error and retry.
            error, seconds = self._attempt(good, lambda: handler(good))
            results.update(self._group_outcomes(good, error, seconds))
        return results

    def _group_outcomes(
        self,
        events: list[Event],
        error: BaseException | None,
        seconds: float,
    ) -> dict[int, Outcome]:
        results = {}
        for event in events:
            outcome = self._outcome(event, error, seconds / len(events))
            if outcome.status == DEAD:
                self._run_dead_hook(event, outcome.error or "")
            results[event.id] = outcome
        return results

    def _attempt(
        self,
        events: list[Event],
        call: Callable[[], Any],
        probe: bool = False,
        inject: bool = True,
        lazy: bool = False,
    ) -> tuple[BaseException | None, float]:
        """Run `call` in a savepoint, under the channel's time limit (scaled by the number
        of events for a batch handler). A probe's savepoint is always rolled back: only
        its error counts. `lazy`: the savepoint opens at the call's first statement (see
        ``eventbus.running.savepoints``). The caller checks the transaction state
        afterwards."""
        timeout = self.policies[events[0].queue].timeout
        if timeout:
            timeout *= len(events)
        started = time.perf_counter()
        limit = None
        error: BaseException | None = None
        self.liveness.busy(timeout)
        self._cause(events)
        try:
            savepoint = (
                self._pipeline.event()
                if lazy and self._pipeline is not None
                else transaction.atomic(using=self.alias)
            )
            with savepoint, self._limit(timeout) as limit:
                try:
                    for event in events if inject else ():
                        self._inject_fault(event)
                    call()
                except BaseException as exc:
                    _release_frames(exc)
                    raise
                if probe:
                    raise _ProbeSucceeded
        except _ProbeSucceeded:
            pass
        except BaseException as exc:  # whatever a handler raises: its event's error
            error = exc
        finally:
            self.liveness.idle()
        self._check_state()
        if limit is not None and limit.fired and error is not None:
            error = HandlerTimeout(f"handler ran longer than {timeout:g} s")
        return error, time.perf_counter() - started

    @contextlib.contextmanager
    def _loop_limit(self) -> Iterator[Any]:
        connection = connections[self.alias]
        conn = connection.connection
        cancel = (lambda: conn.cancel_safe(timeout=5)) if conn is not None else None
        with loop_limit(cancel, sys._getframe(2)) as limit, self._queries_checked(limit):
            yield limit

    @contextlib.contextmanager
    def _limit(self, seconds: float | None) -> Iterator[Any]:
        conn = connections[self.alias].connection
        cancel = (lambda: conn.cancel_safe(timeout=5)) if conn is not None else None
        with time_limit(seconds, cancel, sys._getframe(2)) as limit:
            if limit is None:
                yield limit
                return
            with self._queries_checked(limit):
                yield limit

    @contextlib.contextmanager
    def _queries_checked(self, limit: Any) -> Iterator[None]:
        """Stop a handler whose time is up at its next query: raised from the query call,
        like any database error, which every atomic block around it unwinds correctly.
        This catches an ORM loop of short queries that no single cancel can stop. Django's
        own savepoint statements always pass, so its bookkeeping stays in step."""

        def check(execute: Callable[..., Any], sql_: Any, params: Any, many: bool, ctx: Any) -> Any:
            if limit.fired and not (isinstance(sql_, str) and sql_.startswith(SAVEPOINT_SQL)):
                raise Deadline
            return execute(sql_, params, many, ctx)

        with connections[self.alias].execute_wrapper(check):
            yield

    def _cause(self, events: list[Event]) -> None:
        """What the handler about to run writes was caused by its event; a batch
        handler's writes name no single cause, unless its events share a collection."""
        if self._pipeline is None:
            return
        if len(events) == 1:
            self._pipeline.caused_by(events[0].id, events[0].collection)
        else:
            shared = {e.collection for e in events}
            self._pipeline.caused_by(None, shared.pop() if len(shared) == 1 else None)

    def _inject_fault(self, event: Event) -> None:
        """EVENTBUS_FAULT_RATE: fail this attempt on purpose, before its handler runs."""
        if faults.injected(self.fault_seed, self.fault_rate, event.id, event.attempt):
            raise faults.InjectedFault(f"fault injected into attempt {event.attempt}")

    def _with_payload(self, event: Event) -> Event:
        """The event with the payload its claim left out; raises ``MalformedEvent`` if it
        cannot be decoded."""
        if event.id not in self._lazy:
            return event
        loaded, failed = self._with_payloads([event])
        if failed:
            raise failed[event.id]
        return loaded[0]

    def _with_payloads(self, events: list[Event]) -> tuple[list[Event], dict[int, MalformedEvent]]:
        """The events, with the payloads their claim left out fetched now (under the lock),
        and apart, by id, the errors of those whose payloads cannot be decoded."""
        lazy = [e.id for e in events if e.id in self._lazy]
        if not lazy:
            return events, {}
        with connections[self.alias].cursor() as cursor:
            cursor.execute(*sql.payloads(lazy))
            loaded = {row[0]: row[1:] for row in cursor.fetchall()}
        ready: list[Event] = []
        failed: dict[int, MalformedEvent] = {}
        for e in events:
            if e.id not in loaded:
                ready.append(e)
                continue
            try:
                old, new = decode_payloads(e.id, e.queue, *loaded[e.id])
            except MalformedEvent as exc:
                failed[e.id] = exc
                continue
            ready.append(replace(e, old=old, new=new))
        return ready, failed

    def _outcome(self, event: Event, error: BaseException | None, seconds: float) -> Outcome:
        transient_errors = self._transients.get(event.id, 0)
        policy = self.policies[event.queue].retry
        transient = is_transient(error)
        if transient and transient_errors >= self.settings.TRANSIENT_RETRIES:
            transient = False  # out of transient retries: an ordinary failed attempt
        counted = event.attempt - transient_errors  # transient errors use none up
        step = after_attempt(
            counted, error, policy, transient=transient, transient_count=transient_errors
        )
        text = describe(error) if error is not None else None
        return Outcome(
            event.id, event.queue, event.attempt, step.state, text, seconds, step.delay, transient
        )

    def _run_dead_hook(self, event: Event, error_text: str) -> None:
        hook = registry.dead_hook_for(event.queue)
        if hook is None:
            return
        error, _ = self._attempt([event], lambda: hook(event, error_text), inject=False, lazy=True)
        if error is not None:
            log.error(
                "event %d %s: its on_dead hook failed: %s",
                event.id,
                event.queue,
                first_line(describe(error)),
                extra={"event_id": event.id, "channel": event.queue},
            )

    def _mark(self, outcomes: list[Outcome], states: tuple[str, ...]) -> None:
        """Record the outcomes of events claimed in `states` (where their rows are)."""
        finished = [o for o in outcomes if o.status == DONE]
        done = [o.event_id for o in finished]
        errors = [
            sql.ErrorMark(o.event_id, o.status, o.retry_in, o.error or "", o.transient, o.seconds)
            for o in outcomes
            if o.status != DONE
        ]
        # The dashboard's rollup rides in the first mark statement: no round trip of its own.
        rollup_rows = rollup.rows(outcomes, self.writer) if self.settings.ROLLUP else None
        marks = []
        if done:
            seconds = [o.seconds for o in finished]
            marks.append(sql.mark_done(self.worker_name, done, rollup_rows, seconds, states))
            rollup_rows = None
        if errors:
            marks.append(sql.mark_errors(self.worker_name, errors, rollup_rows, states))
        with connections[self.alias].cursor() as cursor:
            # Each mark finds its rows by id (see sql.PIN_MARK_PLAN): where Django binds
            # parameters on the client, pinned in the mark's own string.
            for query, params in marks:
                if self._client_binding:
                    cursor.execute(sql.mark_pinned(query), params)
                    continue
                cursor.execute(sql.PIN_MARK_PLAN)
                cursor.execute(query, params)
                cursor.execute(sql.UNPIN_MARK_PLAN)
            # Only while someone follows: a notifying commit takes a cluster-wide lock
            # (see eventbus.running.followers). Delivered at this transaction's commit.
            self._announced = followers.watched
            if self._announced:
                cursor.execute(sql.NOTIFY_CHANGES)

    def _announce(self) -> None:
        """Tell followers after the commit: the flag was set while the transaction ended."""
        with connections[self.alias].cursor() as cursor:
            cursor.execute(sql.NOTIFY_CHANGES)

    # --- Transaction state -------------------------------------------------------------

    def _check_state(self, connection: Any = None) -> None:
        """Never go on, or commit, on a connection whose state is unknown: after every
        attempt Django must be back in exactly the claim's atomic block, and the server in
        a healthy transaction. A handler that left an atomic block open, closed the
        connection or corrupted Django's bookkeeping fails the batch, which then runs
        event by event, so the culprit fails alone."""
        connection = connection or connections[self.alias]
        conn = connection.connection
        status = conn.info.transaction_status if conn is not None else None
        now = _bookkeeping(connection)
        if now != self._baseline or status != _INTRANS:
            raise TransactionStateUnknown(
                f"Django's transaction bookkeeping {now} (expected {self._baseline}), "
                f"server transaction status {status}"
            )

    def _discard_connection(self) -> None:
        """Drop the claim connection and reset Django's bookkeeping of it: the server rolls
        the transaction back, and the next batch starts on a fresh connection."""
        connection = connections[self.alias]
        with contextlib.suppress(Exception):
            if connection.connection is not None:
                connection.connection.close()
        connection.connection = None
        connection.in_atomic_block = False
        connection.savepoint_ids = []
        connection.atomic_blocks = []
        connection.needs_rollback = False
        connection.closed_in_transaction = False
        connection.commit_on_exit = True
        connection.run_on_commit = []
        connection.autocommit = True
        connection.savepoint_state = 0

    def _claim_size(self, scope: sql.Scope, limit: int) -> int:
        """Claim about as many events as the last transaction could handle: when its time
        or savepoint budget cut it short, claiming the full batch again would lock (and
        fetch) the rest for nothing. Grows back by doubling once batches run whole."""
        return max(1, min(limit, self._fits))

    def _learn_fit(self, limit: int, claimed: int, handled: int) -> None:
        if handled < claimed and not self.should_stop():
            self._fits = max(1, handled)
        elif claimed >= min(limit, self._fits):
            self._fits = min(limit, max(1, self._fits) * 2)

    def _claim_rows(self, cursor: Any, scope: sql.Scope, limit: int, inline: int) -> list[Any]:
        """Pin the plan, claim, unpin: one round trip where Django binds parameters on the
        client (its default), three where it binds them on the server."""
        pin = self._pin_for(limit)
        query, params = sql.claim(scope, limit, inline)
        if self._client_binding:
            cursor.execute(sql.claim_pinned(pin, query), params)
            while cursor.description is None and cursor.nextset():
                pass  # past the SET LOCALs to the claim's rows
            return cursor.fetchall()
        cursor.execute(pin)
        cursor.execute(query, params)
        rows = cursor.fetchall()
        cursor.execute(sql.UNPIN_CLAIM_PLAN)
        return rows

    def _pin_for(self, limit: int) -> Any:
        """The claim's SET LOCALs, with an idle-in-transaction limit longer than any one
        handler call may take (0, none, when some channel has no timeout)."""
        pin = self._pins.get(limit)
        if pin is None:
            names = registry.queue_names()
            timeouts = [self.policies[name].timeout for name in names]
            if not names or not all(timeouts):
                milliseconds = 0
            else:
                batch = any(registry.handler_for(n).batch for n in wiring.handled_channels())
                longest = max(t for t in timeouts if t) * (limit if batch else 1)
                milliseconds = int(longest * 1000) + IDLE_GRACE_MS
            pin = self._pins[limit] = sql.pin_claim_plan(milliseconds)
        return pin


class _WorkerDied(Exception):
    pass


_INTRANS = psycopg.pq.TransactionStatus.INTRANS


def _release_frames(exc: BaseException) -> None:
    """Free the failed handler's frames now, inside its savepoint, not whenever the cyclic
    garbage collector gets to them: a server-side cursor (``QuerySet.iterator()``) that
    they hold then closes while its savepoint still exists, instead of sending CLOSE later
    into whatever transaction is current (which aborts it)."""
    traceback.clear_frames(exc.__traceback__)


def _events(rows: list[Any]) -> tuple[list[Event], list[tuple[Event, MalformedEvent]]]:
    """The claimed rows as events; apart, each whose payload cannot be decoded (JSON
    nested deeper than Python decodes), without its payload, with the error: its handler
    never runs, and the rest of the batch does."""
    try:
        return [from_row(row) for row in rows], []
    except MalformedEvent:
        pass
    events: list[Event] = []
    undecodable: list[tuple[Event, MalformedEvent]] = []
    for row in rows:
        try:
            events.append(from_row(row))
        except MalformedEvent as exc:
            undecodable.append((from_row(row, decode=False), exc))
    return events, undecodable


def _bookkeeping(connection: Any) -> tuple[Any, ...]:
    """Django's record of the transaction: must be the same before and after an attempt."""
    return (
        connection.in_atomic_block,
        tuple(connection.savepoint_ids),
        len(connection.atomic_blocks),
        connection.needs_rollback,
    )


_warned: set[str] = set()


def _warn_unhandled(channel: str) -> None:
    if channel not in _warned:
        _warned.add(channel)
        log.warning(
            "channel %s: this listener has no handler; its events stay pending",
            channel,
            extra={"channel": channel},
        )


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
    reason = first_line(outcome.error)
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
            "%s: deferred %.2f s after a transient error (attempt %d): %s",
            where,
            outcome.retry_in,
            outcome.attempt,
            reason,
            extra=extra,
        )
