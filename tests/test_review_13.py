"""Review of issue 13: behaviours users rely on that the new code breaks (each fails now).

Real PostgreSQL, real executors; no mocks.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.validators import URLValidator
from django.db import connection
from django.http import HttpRequest
from django.template import engines
from django.template.response import TemplateResponse
from django.test import Client, override_settings
from django.urls import path

import eventbus
from blog.models import Post
from eventbus import Chain, ChainEnd, Channel, Event, RetryPolicy, read_primary
from eventbus.integrations import outbound
from eventbus.models import EventRecord
from eventbus.operating import status
from eventbus.testing import run_events
from tests.test_callbacks import Receiver

# One isolation="batch" channel: its handlers share one savepoint per claim, so the
# executor sets the cause only before statements it judges able to write an event.
batch = Channel("rv_batch", isolation="batch")
noted = Channel("rv_noted")  # events written by SQL (a function, a trigger)
elsewhere = Channel("rv_elsewhere")  # what the first handler publishes


@batch.on
def _batch(event: Event) -> None:
    with connection.cursor() as cursor:
        if event.new["do"] == "publish":
            elsewhere.publish({"from": event.id})
        elif event.new["do"] == "select_function":
            cursor.execute("SELECT rv_note(%s)", [event.id])
        elif event.new["do"] == "delete_parent":
            cursor.execute("DELETE FROM rv_parent WHERE id = %s", [event.new["parent"]])


@noted.on
def _noted(event: Event) -> None:
    pass


@elsewhere.on
def _elsewhere(event: Event) -> None:
    pass


# An event written by SQL, as a channel trigger writes one: its cause and collection
# come from the event table's column defaults.
NOTE = (
    "INSERT INTO eventbus_event (channel, operation, table_name, key, new) "
    "VALUES ('rv_noted', 'PUBLISH', '', {key}, '{{}}'::json)"
)


@pytest.fixture
def sql_writers(db: None) -> None:
    """A function that writes an event, and a parent table whose ON DELETE CASCADE
    reaches a child table with a trigger that writes one."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION rv_note(k bigint) RETURNS void LANGUAGE sql AS $$ "
            + NOTE.format(key="k::text")
            + " $$"
        )
        cursor.execute("CREATE TABLE rv_parent (id int PRIMARY KEY)")
        cursor.execute(
            "CREATE TABLE rv_child (id int PRIMARY KEY, "
            "parent int NOT NULL REFERENCES rv_parent ON DELETE CASCADE)"
        )
        cursor.execute(
            "CREATE FUNCTION rv_child_gone() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            + NOTE.format(key="'child'")
            + "; RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER rv_child_gone AFTER DELETE ON rv_child "
            "FOR EACH STATEMENT EXECUTE FUNCTION rv_child_gone()"
        )
        cursor.execute("INSERT INTO rv_parent VALUES (1)")
        cursor.execute("INSERT INTO rv_child VALUES (1, 1)")


@pytest.mark.django_db
def test_an_event_a_function_writes_in_a_batch_handler_never_names_another_event_as_cause(
    sql_writers: None,
) -> None:
    """README: such an event "gets no cause". It gets the previous handler's instead: the
    first event's cause is still set in the claim transaction, and a SELECT never resets
    it. `events tree` then shows the second event's work under the first event."""
    first = batch.publish({"do": "publish"})
    second = batch.publish({"do": "select_function"})
    run_events(["rv_batch"])
    [written] = EventRecord.objects.filter(channel="rv_noted")
    assert written.caused_by in (None, second), (
        f"caused by event {written.caused_by} (the first event is {first})"
    )
    assert written.correlation_id in (None, second)


@pytest.mark.django_db
def test_events_that_an_on_delete_cascade_writes_in_a_batch_handler_name_their_cause(
    sql_writers: None,
) -> None:
    """The DELETE targets a table with no trigger of its own, so no cause is set; the
    cascade (an internal trigger, not in the executor's list) deletes from a table whose
    trigger writes an event, and that event names the previous handler's event."""
    first = batch.publish({"do": "publish"})
    second = batch.publish({"do": "delete_parent", "parent": 1})
    run_events(["rv_batch"])
    [written] = EventRecord.objects.filter(channel="rv_noted")
    assert written.caused_by == second, (
        f"caused by event {written.caused_by} (the first event is {first})"
    )


# A chain whose first step has an external effect (counted) and returns what a Django
# model gives (a datetime), which JSON cannot hold.
charges: list[int] = []
chain_ends: list[ChainEnd] = []
billing = Chain("rv_billing", retry=RetryPolicy(max_attempts=4, base_delay=0))


@billing.step
def charge_card(data: dict[str, Any], event: Event) -> dict[str, Any]:
    charges.append(event.id)  # the card is charged
    return {"charged_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)}


@billing.step
def send_receipt(data: dict[str, Any], event: Event) -> None:
    pass


@billing.on_end
def _billing_ended(end: ChainEnd) -> None:
    chain_ends.append(end)


@pytest.mark.django_db
def test_a_chain_step_that_returned_is_never_run_again() -> None:
    """The step succeeded (the card is charged); only storing its result for the next
    step fails (json.dumps). That error is retried like the step's own, so the step runs
    again on every attempt: four charges for one chain."""
    charges.clear()
    chain_ends.clear()
    billing.start({"amount": 10})
    run_events(["rv_billing"], retries=True)
    assert len(charges) == 1, f"the step ran {len(charges)} times"
    assert [e.state for e in chain_ends] == ["dead"]


@pytest.mark.django_db
def test_events_tree_and_retry_accept_the_collection_id_the_api_answers_with() -> None:
    """`eventbus.collection()` reserves an id that is no event's (the webhook API's
    202 gives it as "collection"); the status API finds it, the commands do not."""
    with eventbus.collection() as made:
        failing = batch.publish({"do": "nothing"})
    EventRecord.objects.filter(pk=failing).update(state="dead", last_error="boom")
    out = StringIO()
    call_command("events", "tree", str(made), stdout=out)
    assert out.getvalue().startswith(f"collection {made}: dead (1 event(s))")
    out = StringIO()
    call_command("events", "retry", "--collection", str(made), stdout=out)
    assert f"re-queued 1 event(s): {failing}" in out.getvalue()


@pytest.mark.django_db
def test_joining_a_collection_by_any_members_id_adds_to_that_collection() -> None:
    """Everywhere else any member's id finds its collection; `join=` takes the id as the
    collection's, so joining by a member's id makes a second, split collection."""
    with eventbus.collection() as made:
        member = elsewhere.publish({})
    assert status.collection_id(member) == made
    with eventbus.collection(join=member):
        joined = elsewhere.publish({})
    assert status.collection_id(joined) == made
    assert joined in [e["id"] for e in status.collection(made)["events"]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(path="/hooks/café")
    yield started
    started.stop()


def test_a_callback_url_that_the_api_accepts_is_delivered(receiver: Receiver) -> None:
    """URLValidator (the API's check) accepts a non-ASCII path; http.client then cannot
    encode the request line and raises UnicodeEncodeError, which is no OutboundError: the
    callback handler lets it through as an ordinary failure, retried until dead, and the
    callback never reaches the receiver. A browser sends such a path percent-encoded."""
    URLValidator(schemes=["http", "https"])(receiver.url.replace("127.0.0.1", "example.com"))
    response = outbound.post(receiver.url, b"{}", allow_private=True, deadline=5)
    assert response.status == 200
    assert len(receiver.requests) == 1


def test_one_read_primary_block_used_by_two_threads_at_once_exits_cleanly() -> None:
    """`read_primary()` is used like `transaction.atomic`, whose instances can be shared
    (a module-level `PRIMARY = read_primary("primary")`). Its tokens are kept on the
    instance, so one thread's exit resets the other thread's token: ValueError in both,
    and a thread's pin is never reset."""
    shared = read_primary()
    errors: list[BaseException] = []
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:  # in, then out while the second is still in
        try:
            with shared:
                first_in.set()
                second_in.wait(5)
        except BaseException as exc:
            errors.append(exc)
        finally:
            first_out.set()

    def second() -> None:
        try:
            first_in.wait(5)
            with shared:
                second_in.set()
                first_out.wait(5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []


# The project's own read router, second after eventbus.PrimaryForHandlers: it is asked
# only when no read_primary() (or handler) decides; it records what it was asked.
asked_replica: list[str] = []


class RecordingReplicaRouter:
    def db_for_read(self, model: type, **hints: Any) -> None:
        asked_replica.append(model.__name__)
        return None  # one database here: "default" either way


@read_primary
def posts_page(request: HttpRequest) -> TemplateResponse:
    posts = Post.objects.order_by("id")  # lazy, as a ListView's object_list
    template = engines["django"].from_string("{% for p in posts %}{{ p.title }};{% endfor %}")
    return TemplateResponse(request, template, {"posts": posts})


urlpatterns = [path("rv/posts/", posts_page)]


@pytest.mark.django_db
@override_settings(
    ROOT_URLCONF=__name__,
    DATABASE_ROUTERS=["eventbus.PrimaryForHandlers", f"{__name__}.RecordingReplicaRouter"],
)
def test_a_read_primary_view_that_renders_a_template_reads_the_primary(
    client: Client, post: Post
) -> None:
    """A TemplateResponse (every generic class-based view's) is rendered after the view
    returns, outside the decorator: its lazy querysets go to the replica router."""
    asked_replica.clear()
    response = client.get("/rv/posts/")
    assert response.content.decode() == f"{post.title};"
    assert "Post" not in asked_replica


@pytest.mark.django_db
def test_events_a_test_writes_after_run_events_are_roots() -> None:
    """`eventbus.testing.run_events` runs in the test's transaction (a TestCase's), and
    the cause the executor set for the last handled event (here sent before the mark,
    though its handler sent no query) outlives the claim's savepoint: what the test writes
    next is "caused" by that event, and joins its collection."""
    handled = elsewhere.publish({})
    run_events(["rv_elsewhere"])
    later = elsewhere.publish({})
    record = EventRecord.objects.get(pk=later)
    assert (record.caused_by, record.correlation_id) == (None, None), f"handled: {handled}"
