"""OpenTelemetry tracing: a span per handler call, joined to the trace of the request that
wrote the event, across the database.

Optional: with OpenTelemetry installed (``pip install eventbus[otel]``) and a tracer
provider configured, each handler call runs in a span of kind ``CONSUMER`` carrying the
event's id, channel and attempt, its outcome and its error. Without it, or with
``EVENTBUS["TRACING"] = False``, nothing here imports OpenTelemetry: the executor holds
``None`` instead of a `HandlerTracer`, and checks that once per batch, never per event.

**How a trace crosses the database.** `TraceContextMiddleware` reads the request's
current span (started by OpenTelemetry's Django or WSGI instrumentation) and, before each
statement of the request that can write an event, sets the transaction-local setting
``eventbus.traceparent``; the event table's ``traceparent`` column defaults to it
(migration ``eventbus.0010``), as ``caused_by`` defaults to the executor's setting. The
worker reads the batch's stored trace contexts in one query after the claim, only when
tracing is on, and starts each handler's span as a child of its event's context.

Why transaction-local, set before each such write, and not once per request for the
session (``set_config(..., false)`` at the start, reset at the end):

- **Transaction pooling.** Behind PgBouncer in transaction mode, consecutive statements of
  one request may run on different server connections: a session setting would be
  missing where the INSERT runs, and left behind for another client's transactions.
  A transaction-local setting lives exactly as long as the transaction that writes.
- **Kept connections** (``CONN_MAX_AGE``): a request that dies between the set and the
  reset leaves nothing on the connection for the next request to inherit.
- **No connection for requests that write nothing.** Only statements that can write an
  event pay: an INSERT, UPDATE or DELETE of a table with a trigger (the list is read once
  per process and database), or a statement the check cannot read (``WITH``, a
  composed one such as ``publish``'s). Each pays one extra round trip. A write in
  autocommit (no transaction open) is wrapped in one, so that the setting and the write
  share it; inside ``atomic()`` the setting joins the open transaction, and is cleared at
  the end of the request if that transaction is still open (a test's, say).

Statements a request sends after its response has left the middleware (a streaming
response's generator) are not traced.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse

from eventbus import conf, sql
from eventbus.running.errortext import first_line
from eventbus.running.savepoints import may_make_events, triggered_tables

if TYPE_CHECKING:  # never imported at run time unless tracing is on
    from eventbus.conf import Settings
    from eventbus.event import Event
    from eventbus.running.executor import Outcome

SETTING = "eventbus.traceparent"  # read by the event table's default (migration 0010)
SET_TRACEPARENT = f"SELECT set_config('{SETTING}', %s, true)"
UNSTARTED = "unstarted"  # a batch handler's event left for the next batch (the budget)

_WRITE = re.compile(r"\s*\(*\s*(?:INSERT|UPDATE|DELETE|MERGE|WITH|COPY)\b", re.IGNORECASE)


def _installed() -> bool:
    """Whether OpenTelemetry's API is installed (importing it: called only when wanted)."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def _wanted(settings: Settings) -> bool:
    """TRACING: False never imports OpenTelemetry; True requires it; None uses it if there."""
    if settings.TRACING is False:
        return False
    if _installed():
        return True
    if settings.TRACING:
        raise ImproperlyConfigured(
            'EVENTBUS["TRACING"] is on but OpenTelemetry is not installed: '
            "pip install 'eventbus[otel]'"
        )
    return False


# --- The web side -------------------------------------------------------------------------


class TraceContextMiddleware:
    """Store the current trace context in the events a request's writes make.

    Put it anywhere in ``MIDDLEWARE``: it reads the current span when the request reaches
    it, so OpenTelemetry's own instrumentation must start the request's span before
    (``DjangoInstrumentor`` puts its middleware first; a WSGI middleware wraps them all).
    Removed at start-up (``MiddlewareNotUsed``) when tracing is off or not installed.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        if not _wanted(conf.get()):
            raise MiddlewareNotUsed("eventbus tracing is off, or OpenTelemetry not installed")
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.get_response = get_response
        self._propagator = TraceContextTextMapPropagator()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)  # nothing without a valid current span
        traceparent = carrier.get("traceparent")
        if traceparent is None:
            return self.get_response(request)
        writes = TracedWrites(traceparent)
        with contextlib.ExitStack() as stack:
            stack.callback(writes.clear)
            for connection in connections.all():
                stack.enter_context(connection.execute_wrapper(writes))
            return self.get_response(request)


class TracedWrites:
    """An execute wrapper: before a statement that can write an event, the traceparent."""

    def __init__(self, traceparent: str) -> None:
        self.traceparent = traceparent
        self.touched: set[str] = set()  # aliases whose open transaction holds it

    def __call__(
        self, execute: Callable[..., Any], sql_: Any, params: Any, many: bool, context: Any
    ) -> Any:
        connection = context["connection"]
        if not writes_events(sql_, connection):
            return execute(sql_, params, many, context)
        if connection.get_autocommit():  # the statement alone is a transaction: make it one
            with transaction.atomic(using=connection.alias):
                self._set(connection, self.traceparent)
                return execute(sql_, params, many, context)
        self._set(connection, self.traceparent)
        self.touched.add(connection.alias)
        return execute(sql_, params, many, context)

    def clear(self) -> None:
        """The request is over: a transaction it leaves open forgets its trace context."""
        for alias in self.touched:
            connection = connections[alias]
            if connection.connection is not None and not connection.get_autocommit():
                with contextlib.suppress(Exception):  # an aborted transaction: moot
                    self._set(connection, "")

    @staticmethod
    def _set(connection: Any, value: str) -> None:
        """On the driver's own cursor: past the execute wrappers, into the same transaction."""
        with connection.wrap_database_errors, connection.connection.cursor() as cursor:
            cursor.execute(SET_TRACEPARENT, [value])


def writes_events(statement: Any, connection: Any) -> bool:
    """Whether `statement` can write an event: an INSERT, UPDATE or DELETE of a table with a
    trigger (or of the event table), or a write the check cannot read."""
    if isinstance(statement, str) and not _WRITE.match(statement):
        return False
    return may_make_events(statement, triggered_tables(connection))


# --- The worker side ----------------------------------------------------------------------


def handler_tracer(settings: Settings) -> HandlerTracer | None:
    """The executor's tracer, or None: tracing off, OpenTelemetry not installed, or (with
    TRACING unset) no tracer provider configured, so that no span would be recorded."""
    if not _wanted(settings):
        return None
    from opentelemetry import trace

    if settings.TRACING is None and isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    ):
        return None
    return HandlerTracer()


class HandlerTracer:
    """Spans for handler calls; `load` fetches a batch's trace contexts after its claim."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from eventbus import __version__

        self._trace = trace
        self._tracer = trace.get_tracer("eventbus", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self.contexts: dict[int, str] = {}  # the batch's events with a stored traceparent

    def load(self, connection: Any, ids: list[int]) -> None:
        """The claimed batch's trace contexts: one query, under the claim's locks."""
        with connection.cursor() as cursor:
            cursor.execute(*sql.trace_contexts(ids))
            self.contexts = dict(cursor.fetchall())

    @contextlib.contextmanager
    def span(self, events: list[Event]) -> Iterator[HandlerSpan]:
        """The current span while `events`' handler runs: a child of their request's trace
        if they share one; a batch whose events came from several traces links to each."""
        trace = self._trace
        stored = list(dict.fromkeys(self.contexts[e.id] for e in events if e.id in self.contexts))
        parent = None  # the current context: in a worker, none (a new trace)
        links = []
        if len(stored) == 1:
            parent = self._propagator.extract({"traceparent": stored[0]})
        else:
            for traceparent in stored:
                context = self._propagator.extract({"traceparent": traceparent})
                links.append(trace.Link(trace.get_current_span(context).get_span_context()))
        first = events[0]
        attributes: dict[str, Any] = {
            "messaging.system": "eventbus",
            "messaging.operation.type": "process",
            "messaging.destination.name": first.queue,
            "eventbus.channel": first.queue,
        }
        if len(events) == 1:
            attributes["messaging.message.id"] = str(first.id)
            attributes["eventbus.event_id"] = first.id
            attributes["eventbus.attempt"] = first.attempt
        else:
            attributes["messaging.batch.message_count"] = len(events)
            attributes["eventbus.event_ids"] = [e.id for e in events]
            attributes["eventbus.attempts"] = [e.attempt for e in events]
        with self._tracer.start_as_current_span(
            f"process {first.queue}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        ) as span:
            yield HandlerSpan(span, events, trace)


class HandlerSpan:
    """One handler call's span, told its events' outcomes before it ends."""

    def __init__(self, span: Any, events: list[Event], trace: Any) -> None:
        self.span, self.events, self._trace = span, events, trace

    def record(self, outcomes: Iterable[Outcome]) -> None:
        by_id = {o.event_id: o for o in outcomes}
        span = self.span
        states = [by_id[e.id].status if e.id in by_id else UNSTARTED for e in self.events]
        if len(self.events) == 1:
            span.set_attribute("eventbus.outcome", states[0])
        else:
            span.set_attribute("eventbus.outcomes", states)
            span.set_attribute("eventbus.outcome", states[0] if len(set(states)) == 1 else "mixed")
        failed = [by_id[e.id] for e in self.events if e.id in by_id and by_id[e.id].error]
        for outcome in failed:
            summary = first_line(outcome.error)
            kind, _, message = summary.partition(": ")
            span.add_event(
                "exception",
                {
                    "exception.type": kind,
                    "exception.message": message or summary,
                    "exception.stacktrace": outcome.error or "",
                    "eventbus.event_id": outcome.event_id,
                },
            )
            if outcome.retry_in:
                span.set_attribute("eventbus.retry_in", outcome.retry_in)
        if failed:
            summary = first_line(failed[0].error)
            span.set_attribute("error.type", summary.partition(": ")[0])
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, summary))
