"""Tracing: a handler runs in a span, and the span joins the trace of the request that
wrote its event, across the database; without OpenTelemetry nothing of it is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from blog.models import Comment, Post
from eventbus import Channel, Event, GiveUp, RetryLater
from eventbus.integrations.tracing import TraceContextMiddleware
from eventbus.models import EventRecord
from eventbus.testing import run_events
from tests.support import ROOT, manage_env

flaky = Channel("traced_flaky")
doomed = Channel("traced_doomed")
batched = Channel("traced_batched")


@flaky.on
def _flaky(event: Event) -> None:
    raise RetryLater("the row is not visible yet", delay=30)


@doomed.on
def _doomed(event: Event) -> None:
    raise GiveUp("card declined")


@batched.on_batch
def _batched(events: list[Event]) -> None:
    pass


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A tracer provider recording to memory, as a project's OpenTelemetry set-up would."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    # The global provider may be set once per process; OpenTelemetry's own test utilities
    # (reset_trace_globals) undo it like this, so the other specs run untraced.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    provider.shutdown()


def add_comment(client: Client, post: Post, author: User, body: str) -> HttpResponse:
    """The admin's "Add comment" form, posted."""
    form = {"post": post.pk, "author": author.pk, "body": body}
    form.update(created_at_0="2026-11-24", created_at_1="12:00:00")
    return client.post("/admin/blog/comment/add/", form)


def handler_spans(exporter: InMemorySpanExporter, channel: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == f"process {channel}"]


@pytest.mark.django_db
def test_a_traced_request_and_the_handler_of_its_write_are_one_trace(
    spans: InMemorySpanExporter, post: Post, reader: User
) -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    tracer = trace.get_tracer("the web server")  # as OpenTelemetry's Django instrumentation
    with tracer.start_as_current_span("POST /admin/blog/comment/add/", kind=SpanKind.SERVER):
        response = add_comment(client, post, reader, "nice")
    assert response.status_code == 302, response.content[:500]
    [event] = EventRecord.objects.filter(channel="comment_created")
    assert event.traceparent

    [outcome] = run_events(["comment_created"])

    assert outcome.ok
    assert [m.to for m in mail.outbox] == [["ada@example.com"]], "the handler sent its email"
    [request] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    [handler] = handler_spans(spans, "comment_created")
    assert handler.context.trace_id == request.context.trace_id, "one trace"
    assert handler.parent is not None and handler.parent.span_id == request.context.span_id
    assert handler.kind == SpanKind.CONSUMER
    assert (
        dict(handler.attributes or {}).items()
        >= {
            "eventbus.event_id": event.id,
            "eventbus.channel": "comment_created",
            "eventbus.attempt": 1,
            "eventbus.outcome": "done",
        }.items()
    )
    assert handler.status.status_code == StatusCode.UNSET


@pytest.mark.django_db
def test_events_written_outside_a_traced_request_carry_no_trace_and_start_their_own(
    spans: InMemorySpanExporter, post: Post, reader: User
) -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    add_comment(client, post, reader, "a")
    with trace.get_tracer("web").start_as_current_span("a traced request"):
        add_comment(client, post, reader, "b")
    # the same (test) transaction, after the traced request: its context is not inherited
    Comment.objects.create(post=post, author=reader, body="c")
    stored = EventRecord.objects.filter(channel="comment_created").order_by("id")
    assert [bool(e.traceparent) for e in stored] == [False, True, False]

    run_events(["comment_created"])

    handlers = handler_spans(spans, "comment_created")
    assert [h.parent is None for h in handlers] == [True, False, True]
    assert len({h.context.trace_id for h in handlers}) == 3


@pytest.mark.django_db(transaction=True)
def test_a_write_in_autocommit_carries_the_trace_and_leaves_the_connection_clean(
    spans: InMemorySpanExporter, post: Post, reader: User
) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        assert connection.get_autocommit()
        Comment.objects.create(post=post, author=reader, body="autocommitted")
        return HttpResponse(status=201)

    with trace.get_tracer("web").start_as_current_span("POST /comments/") as request:
        response = TraceContextMiddleware(view)(RequestFactory().post("/comments/"))
    assert response.status_code == 201
    [event] = EventRecord.objects.filter(channel="comment_created")
    assert event.traceparent is not None
    assert f"{request.get_span_context().trace_id:032x}" in event.traceparent
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('eventbus.traceparent', true)")
        assert cursor.fetchone()[0] in (None, ""), "nothing left for the next request"


@pytest.mark.django_db
def test_a_failed_attempt_span_carries_the_outcome_and_the_error(
    spans: InMemorySpanExporter,
) -> None:
    retried, dead = flaky.publish({}), doomed.publish({})
    run_events(["traced_flaky", "traced_doomed"])

    [failed] = handler_spans(spans, "traced_flaky")
    assert failed.attributes["eventbus.event_id"] == retried
    assert failed.attributes["eventbus.outcome"] == "failed"
    assert failed.attributes["eventbus.retry_in"] == 30
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "RetryLater: the row is not visible yet"
    [exception] = failed.events
    assert exception.name == "exception"
    assert exception.attributes["exception.type"] == "RetryLater"
    [died] = handler_spans(spans, "traced_doomed")
    assert (died.attributes["eventbus.event_id"], died.attributes["eventbus.outcome"]) == (
        dead,
        "dead",
    )
    assert died.status.description == "GiveUp: card declined"


@pytest.mark.django_db
def test_a_batch_handler_span_links_every_trace_its_events_came_from(
    spans: InMemorySpanExporter,
) -> None:
    def view(request: HttpRequest) -> HttpResponse:  # publishes two events per request
        batched.publish({"n": 1})
        batched.publish({"n": 2})
        return HttpResponse(status=202)

    requests = []
    for name in ("first request", "second request"):
        with trace.get_tracer("web").start_as_current_span(name) as request:
            TraceContextMiddleware(view)(RequestFactory().post("/"))
        requests.append(request.get_span_context())
    run_events(["traced_batched"])

    [span] = handler_spans(spans, "traced_batched")
    assert span.parent is None, "its events came from two traces: linked, not parented"
    assert {link.context.span_id for link in span.links} == {r.span_id for r in requests}
    ids = EventRecord.objects.filter(channel="traced_batched").order_by("id")
    assert span.attributes["eventbus.event_ids"] == tuple(e.id for e in ids)
    assert span.attributes["eventbus.outcome"] == "done"
    assert span.attributes["eventbus.outcomes"] == ("done",) * 4


# Run in a fresh interpreter: this one imported OpenTelemetry for the specs above.
NOTHING_IMPORTED = r"""
import importlib.abc, json, os, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if sys.argv[1] == "absent":
    sys.meta_path.insert(0, Absent())
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
import django
django.setup()
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from blog.models import Comment, Post
from eventbus.testing import run_events

with transaction.atomic():
    ada = User.objects.create_user("ada-untraced", email="ada@example.com")
    bob = User.objects.create_user("bob-untraced", email="bob@example.com")
    post = Post.objects.create(title="t", body="b", author=ada)
    Client().get("/api/events/1/")  # through the site's middleware
    Comment.objects.create(post=post, author=bob, body="hi")
    outcomes = run_events(["comment_created"])
    transaction.set_rollback(True)
print(json.dumps({
    "handled": [o.status for o in outcomes],
    "imported": sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"),
}))
"""


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["absent", "disabled"])
def test_without_opentelemetry_or_with_tracing_off_nothing_of_it_is_imported(how: str) -> None:
    env = manage_env(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend")
    if how == "disabled":
        env["EVENTBUS_TRACING"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", NOTHING_IMPORTED, how],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"handled": ["done"], "imported": []}
