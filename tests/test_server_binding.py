"""Where Django binds parameters on the server (``OPTIONS: {"server_side_binding": True}``),
the executor takes other paths: the claim's plan pinned in three statements, not one
string; each mark pinned apart; a cause sent on its own before a write that can make an
event. Events are handled, failed, chained and marked as with client-side binding."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection

from eventbus import Channel, Event
from eventbus.models import EventRecord
from eventbus.testing import run_events

pytestmark = pytest.mark.django_db(transaction=True)

# a per-event savepoint that publishes; a batch-isolated child; one that fails
bound_root = Channel("bound_root")
bound_child = Channel("bound_child", isolation="batch")
bound_failing = Channel("bound_failing")


@bound_root.on
def _root(event: Event) -> None:
    bound_child.publish({"from": event.id})


@bound_child.on
def _child(event: Event) -> None:
    pass


@bound_failing.on
def _failing(event: Event) -> None:
    raise RuntimeError(f"refused {event.new['n']}")


@pytest.fixture
def server_binding() -> Iterator[None]:
    """Django's connection, reconnected with server-side binding for the test."""
    options = connection.settings_dict.setdefault("OPTIONS", {})
    connection.close()
    options["server_side_binding"] = True
    try:
        yield
    finally:
        connection.close()
        options.pop("server_side_binding", None)


def test_events_are_handled_failed_chained_and_marked_with_server_side_binding(
    server_binding: None,
) -> None:
    roots = [bound_root.publish({"n": n}) for n in range(3)]
    failing = [bound_failing.publish({"n": n}) for n in range(2)]
    outcomes = run_events(["bound_root", "bound_child", "bound_failing"])
    assert sorted(o.event_id for o in outcomes if o.status == "done") == sorted(
        [*roots, *(e.pk for e in EventRecord.objects.filter(channel="bound_child"))]
    )
    children = EventRecord.objects.filter(channel="bound_child")
    assert sorted(c.caused_by for c in children) == roots
    assert {c.state for c in children} == {"done"}
    for record in EventRecord.objects.filter(pk__in=failing):
        assert record.state == "failed" and record.attempts == 1
        assert record.last_error.startswith(f"RuntimeError: refused {record.new['n']}")
    with connection.cursor() as cursor:  # the mark's pin was taken back
        cursor.execute("SHOW enable_seqscan")
        assert cursor.fetchone() == ("on",)


def test_operators_retry_discard_and_follow_with_server_side_binding(
    server_binding: None,
) -> None:
    """What the admin's buttons and `events` run: discard a failed event, re-queue it."""
    from eventbus import sql
    from eventbus.operating import maintenance, status

    [event_id] = [bound_failing.publish({"n": 7})]
    run_events(["bound_failing"])
    assert maintenance.discard([event_id], "an operator gave up") == [event_id]
    record = EventRecord.objects.get(pk=event_id)
    assert (record.state, record.last_error) == ("dead", "an operator gave up")
    assert record.errors[-1]["error"] == "an operator gave up"
    requeued = maintenance.requeue(sql.Scope(ids=(event_id,), states=("dead",)))
    assert requeued == [(event_id, "bound_failing")]
    assert status.claimed_ids([event_id]) == set()
    assert EventRecord.objects.get(pk=event_id).state == "pending"
