"""Third review of issue 15 (its last step: payloads decoded by the worker, the mark's plan
pinned). Each spec failed on the code the review found, and states what a user relies on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Subquery
from django.test import Client, override_settings

from eventbus.models import EventRecord
from eventbus.running.executor import Executor
from eventbus.sql import Scope
from eventbus.testing import run_events
from tests import poison

pytestmark = pytest.mark.django_db

DEEP = '{"deep": ' + "[" * 5000 + "]" * 5000 + "}"
HUGE_NUMBER = '{"n": ' + "1" * 5000 + "}"  # past Python's 4,300 digits for int()


@pytest.fixture
def staff(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


@pytest.fixture
def effects() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(poison.CREATE_EFFECT_TABLE)
    yield


def insert(channel: str, payloads: list[str]) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, new) "
            "SELECT %s, 'INSERT', 'x', s::json "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS t(s, n) ORDER BY n RETURNING id",
            [channel, payloads],
        )
        return [row[0] for row in cursor.fetchall()]


def notes() -> list[tuple[int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT event_id, note FROM {poison.EFFECT_TABLE} ORDER BY 1, 2")
        return cursor.fetchall()


def with_payload(text: str) -> int:
    """A dead event whose `new` is `text`, as PostgreSQL stores it."""
    record = EventRecord.objects.create(
        channel="comment_created", state="dead", operation="INSERT", table_name="t", new={}
    )
    with connection.cursor() as cursor:
        cursor.execute("UPDATE eventbus_event SET new = %s::json WHERE id = %s", [text, record.pk])
    return record.pk


@pytest.mark.parametrize("channel", ["containment_hooked", "containment_hooked_batch"])
@pytest.mark.parametrize("payload", [DEEP, HUGE_NUMBER], ids=["deep", "huge number"])
@pytest.mark.parametrize("budget", [None, 1000], ids=["in the claim", "fetched later"])
def test_an_event_whose_payload_cannot_be_decoded_runs_its_on_dead_hook(
    effects: None, channel: str, payload: str, budget: int | None
) -> None:
    """Its handler never runs; its on_dead hook does, given the event without its
    payload. Before: dead without its hook, so a chain's end never ran."""
    ok, bad = insert(channel, ["{}", payload])
    overrides = {} if budget is None else {"PAYLOAD_BUDGET": budget}
    with override_settings(EVENTBUS={**settings.EVENTBUS, **overrides}):
        outcomes = Executor("t").run_batch(Scope(channels=(channel,)), 2)
    assert {o.event_id: o.status for o in outcomes} == {ok: "done", bad: "dead"}
    assert notes() == [(ok, "handled"), (bad, "on_dead")]


def test_a_chain_whose_step_cannot_be_decoded_still_runs_its_end() -> None:
    from tests.test_chains import certificate, ends

    ends.clear()
    start = certificate.start({"domain": "deep.example"})
    with connection.cursor() as cursor:
        cursor.execute("UPDATE eventbus_event SET new = %s::json WHERE id = %s", [DEEP, start])
    run_events(["chain_certificate"], retries=True)
    assert [end.state for end in ends] == ["dead"]


@pytest.mark.parametrize("payload", [HUGE_NUMBER, "[" * 880 + "]" * 880])
def test_the_admin_lists_and_shows_an_event_python_cannot_decode_or_encode(
    staff: Client, payload: str
) -> None:
    """A 5,000-digit number, which int() refuses; a payload that decodes just under the
    recursion limit and cannot be encoded again for the page. Before: 500."""
    pk = with_payload(payload)
    assert staff.get("/admin/eventbus/eventrecord/").status_code == 200
    page = staff.get(f"/admin/eventbus/eventrecord/{pk}/change/")
    assert page.status_code == 200
    assert b"not shown: Python cannot" in page.content


def test_a_payload_python_cannot_decode_is_never_written_back_in_its_place() -> None:
    """Before: save() wrote the placeholder over the stored payload, silently."""
    pk = with_payload(DEEP)
    record = EventRecord.objects.get(pk=pk)
    with pytest.raises(ValueError, match="cannot be written back"), transaction.atomic():
        record.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT left(new::text, 12) FROM eventbus_event WHERE id = %s", [pk])
        assert cursor.fetchone()[0] == DEEP[:12]


def test_a_payload_can_be_copied_through_a_subquery() -> None:
    """Before: the subquery read it as text, and PostgreSQL refused text for json."""
    a = EventRecord.objects.create(channel="c", operation="INSERT", table_name="t", new={"id": 1})
    b = EventRecord.objects.create(channel="c", operation="UPDATE", table_name="t", new={"id": 2})
    EventRecord.objects.filter(pk=b.pk).update(
        old=Subquery(EventRecord.objects.filter(pk=a.pk).values("new")[:1])
    )
    assert EventRecord.objects.get(pk=b.pk).old == {"id": 1}


def test_run_events_leaves_the_callers_planner_settings_as_they_were() -> None:
    """Before: each mark set enable_seqscan back to its default for the rest of the
    caller's transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    EventRecord.objects.create(
        channel="comment_created", operation="INSERT", table_name="t", new={"id": 1}
    )
    run_events(["comment_created"])
    with connection.cursor() as cursor:
        cursor.execute("SHOW enable_seqscan")
        assert cursor.fetchone()[0] == "off"


def test_capture_events_decodes_each_payload_once() -> None:
    """A payload that is a JSON string was decoded twice (by psycopg, then again)."""
    from eventbus.testing import capture_events

    with capture_events() as events:
        insert("comment_created", ['"just a string"', '{"id": 3}'])
    assert [e.new for e in events] == ["just a string", {"id": 3}]
