"""Events and the site's models in the Django admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from eventbus.models import EventRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def put(state: str, channel: str = "comment_created", **fields: object) -> EventRecord:
    return EventRecord.objects.create(
        channel=channel,
        operation="INSERT",
        table_name="t",
        new={"id": 7, "body": "hello"},
        state=state,
        **fields,
    )


def test_the_event_list_filters_by_state_and_channel_and_searches_by_id(staff: Client) -> None:
    dead = put("dead", last_error="RowGone: post 3 no longer exists")
    done = put("done", channel="post_created")
    page = staff.get("/admin/eventbus/eventrecord/", {"state__exact": "dead"})
    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == [dead]
    assert b"RowGone: post 3 no longer exists" in page.content
    by_channel = staff.get("/admin/eventbus/eventrecord/", {"channel__exact": "post_created"})
    assert list(by_channel.context["cl"].result_list) == [done]
    by_id = staff.get("/admin/eventbus/eventrecord/", {"q": str(done.pk)})
    assert list(by_id.context["cl"].result_list) == [done]


def test_the_event_detail_shows_payload_and_every_error(staff: Client) -> None:
    event = put(
        "failed",
        attempts=2,
        last_error="ConnectionRefusedError: refused",
        errors=[
            {"attempt": 1, "error": "TimeoutError: slow"},
            {"attempt": 2, "error": "ConnectionRefusedError: refused"},
        ],
    )
    page = staff.get(f"/admin/eventbus/eventrecord/{event.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "&quot;body&quot;: &quot;hello&quot;" in html
    assert "TimeoutError: slow" in html and "ConnectionRefusedError: refused" in html


def test_admin_actions_retry_and_discard(staff: Client) -> None:
    dead, failed, done = put("dead", attempts=10), put("failed"), put("done")
    url = "/admin/eventbus/eventrecord/"
    staff.post(url, {"action": "retry_events", "_selected_action": [dead.pk, done.pk]})
    assert EventRecord.objects.get(pk=dead.pk).state == "pending"
    assert EventRecord.objects.get(pk=done.pk).state == "done"
    staff.post(url, {"action": "discard_events", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert failed.state == "dead"
    assert failed.last_error == "Discarded in the admin by admin"


def test_the_demo_models_are_in_the_admin(staff: Client) -> None:
    for path in ("blog/post", "blog/comment", "blog/tag", "blog/category", "eventbus/workerrecord"):
        assert staff.get(f"/admin/{path}/").status_code == 200, path
