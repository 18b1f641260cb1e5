"""Events and the site's models in the Django admin."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import psycopg
import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.utils import timezone

from blog.models import Post
from eventbus import Channel, Event
from eventbus.models import EventRecord, InflightRecord, WorkerRecord
from eventbus.testing import run_events
from tests.support import database_url

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def put(state: str, channel: str = "comment_created", **fields: object) -> EventRecord:
    row = {"operation": "INSERT", "table_name": "t", "new": {"id": 7, "body": "hello"}}
    return EventRecord.objects.create(channel=channel, state=state, **{**row, **fields})


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


# --- Issue 14: read-only event pages, Retry and Discard, what a page shows -------------------

EVENT_PAGE = "/admin/eventbus/eventrecord/{}/change/"


def test_event_pages_cannot_be_saved_added_or_deleted(staff: Client) -> None:
    event = put("dead", attempts=3, last_error="Boom")
    page = staff.get(EVENT_PAGE.format(event.pk))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert "deletelink" not in html
    assert staff.post(EVENT_PAGE.format(event.pk), {"key": "changed"}).status_code == 403
    assert staff.get(f"/admin/eventbus/eventrecord/{event.pk}/delete/").status_code == 403
    assert staff.get("/admin/eventbus/eventrecord/add/").status_code == 403
    listing = staff.get("/admin/eventbus/eventrecord/").content.decode()
    assert 'value="delete_selected"' not in listing
    assert 'value="retry_events"' in listing and 'value="discard_events"' in listing
    event.refresh_from_db()
    assert event.key is None


def test_retry_and_discard_are_buttons_on_the_page_for_those_who_may_change_events(
    staff: Client,
) -> None:
    dead, failed = put("dead", attempts=10, last_error="Boom"), put("failed", attempts=1)
    page = staff.get(EVENT_PAGE.format(dead.pk)).content.decode()
    retry = f"/admin/eventbus/eventrecord/{dead.pk}/retry/"
    assert f'action="{retry}"' in page and "csrfmiddlewaretoken" in page
    assert staff.get(retry).status_code == 405  # only a POST changes anything
    answer = staff.post(retry, follow=True)
    assert answer.redirect_chain[-1][0] == EVENT_PAGE.format(dead.pk)
    assert f"Event {dead.pk} re-queued: pending, due now." in answer.content.decode()
    dead.refresh_from_db()
    assert (dead.state, dead.attempts) == ("pending", 10)

    staff.post(f"/admin/eventbus/eventrecord/{failed.pk}/discard/")
    failed.refresh_from_db()
    assert (failed.state, failed.last_error) == ("dead", "Discarded in the admin by admin")


def test_a_viewer_sees_events_but_cannot_retry_or_discard(client: Client) -> None:
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_eventrecord"))
    client.force_login(viewer)
    dead = put("dead", attempts=10, last_error="Boom")
    page = client.get(EVENT_PAGE.format(dead.pk))
    assert page.status_code == 200 and "/retry/" not in page.content.decode()
    assert client.post(f"/admin/eventbus/eventrecord/{dead.pk}/retry/").status_code == 403
    assert client.post(f"/admin/eventbus/eventrecord/{dead.pk}/discard/").status_code == 403
    listing = client.get("/admin/eventbus/eventrecord/").content.decode()
    assert 'value="retry_events"' not in listing
    dead.refresh_from_db()
    assert dead.state == "dead"


def test_the_retry_button_is_refused_by_csrf_without_its_token() -> None:
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    dead = put("dead", attempts=10)
    assert client.post(f"/admin/eventbus/eventrecord/{dead.pk}/retry/").status_code == 403
    dead.refresh_from_db()
    assert dead.state == "dead"


def test_a_failed_event_shows_when_it_runs_again_to_the_millisecond(staff: Client) -> None:
    when = timezone.now() + timedelta(minutes=5)
    event = put("failed", attempts=2, last_error="TimeoutError: slow", run_after=when)
    html = staff.get(EVENT_PAGE.format(event.pk)).content.decode()
    stamp = timezone.localtime(when).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    assert f"failed: runs again {stamp} UTC (in 4 min 5" in html  # 5 min, less the test's time
    created = timezone.localtime(event.created_at).strftime("%H:%M:%S.%f")[:-3]
    assert created in html


def test_a_done_event_shows_its_old_errors_as_history_not_as_its_error(staff: Client) -> None:
    event = put(
        "done",
        attempts=2,
        worker="web-1:77",
        finished_at=timezone.now(),
        last_error='ConnectionRefusedError: refused\n  File "smtplib.py", line 341',
        errors=[
            {
                "attempt": 1,
                "at": "2025-05-01T14:03:07.215123+00:00",
                "worker": "web-1:77",
                "error": 'ConnectionRefusedError: refused\n  File "smtplib.py", line 341',
            }
        ],
    )
    listing = staff.get("/admin/eventbus/eventrecord/")
    assert b"ConnectionRefusedError" not in listing.content
    html = staff.get(EVENT_PAGE.format(event.pk)).content.decode()
    current = html.split('class="form-row field-current_error"', 1)[1].split("</fieldset>")[0]
    assert "ConnectionRefusedError" not in current
    assert "None: the event is done." in current
    attempts = html.split('class="eventbus-attempts"', 1)[1].split("</table>")[0]
    # the traceback as text, not escaped JSON; then the attempt that succeeded
    assert '<pre class="eventbus-pre">  File &quot;smtplib.py&quot;, line 341</pre>' in attempts
    assert "\\n" not in attempts
    assert "2025-05-01 14:03:07.215" in attempts
    assert "<td>2</td>" in attempts and "succeeded" in attempts


def test_an_event_links_to_its_source_row_where_the_admin_has_it(staff: Client, post: Post) -> None:
    made = EventRecord.objects.get(channel="post_created")
    html = staff.get(EVENT_PAGE.format(made.pk)).content.decode()
    assert f'<a href="/admin/blog/post/{post.pk}/change/">post {post.pk}</a>' in html

    gone = put("done", table_name="blog_post", new={"id": 999_999})
    html = staff.get(EVENT_PAGE.format(gone.pk)).content.decode()
    assert "post 999999 (table blog_post): no longer exists" in html

    unregistered = put("done", table_name="eventbus_inflight", new={"id": 1})
    html = staff.get(EVENT_PAGE.format(unregistered.pk)).content.decode()
    assert "/admin/eventbus/inflightrecord/" not in html


def test_an_event_page_shows_its_collection_as_a_tree(staff: Client) -> None:
    root = put("done")
    child = put("done", channel="post_created", caused_by=root.pk, correlation_id=root.pk)
    sibling = put("pending", caused_by=root.pk, correlation_id=root.pk)
    grandchild = put("dead", caused_by=child.pk, correlation_id=root.pk, last_error="Boom")
    unrelated = put("done")
    html = staff.get(EVENT_PAGE.format(child.pk)).content.decode()
    tree = html.split('class="eventbus-tree"', 1)[1].split("</ul>")[0]

    def at(pk: int) -> int:
        return tree.index(f">{pk}</a>" if pk != child.pk else f"<strong>{pk} ")

    order = [(e.pk, at(e.pk)) for e in (root, child, sibling, grandchild)]
    assert [pk for pk, _ in sorted(order, key=lambda o: o[1])] == [
        root.pk,
        child.pk,
        grandchild.pk,
        sibling.pk,
    ]
    assert f"<strong>{child.pk} post_created: done (this event)</strong>" in tree
    assert 'style="margin-left: 3.0em"' in tree  # the grandchild, two levels down
    assert f"/admin/eventbus/eventrecord/{grandchild.pk}/change/" in tree
    assert f">{unrelated.pk}</a>" not in tree
    alone = staff.get(EVENT_PAGE.format(unrelated.pk)).content.decode()
    assert "None: nothing caused this event, and it caused nothing." in alone


@pytest.mark.django_db(transaction=True)
def test_an_event_a_worker_holds_is_running_in_the_list_and_on_its_page(staff: Client) -> None:
    held = put("failed", attempts=1, last_error="Boom")
    with psycopg.connect(database_url()) as claim:  # a worker's claim holds the row
        claim.execute("SELECT id FROM eventbus_event WHERE id = %s FOR UPDATE", [held.pk])
        listing = staff.get("/admin/eventbus/eventrecord/")
        page = staff.get(EVENT_PAGE.format(held.pk)).content.decode()
    row = listing.content.decode().split(f"/{held.pk}/change/", 1)[1].split("</tr>")[0]
    assert '<td class="field-state_now">running</td>' in row
    assert "Boom" not in row  # the current attempt's outcome is not known yet
    assert "running: a worker holds it now (attempt 2)" in page
    assert f'/{held.pk}/discard/"' not in page  # a held event cannot be discarded
    after = staff.get(EVENT_PAGE.format(held.pk)).content.decode()
    assert "failed: runs again" in after


# --- Issue 14: the workers page ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_workers_page_counts_handled_events_shows_the_batch_and_marks_silence(
    staff: Client,
) -> None:
    now = timezone.now()
    WorkerRecord.objects.create(
        name="web-1:77",
        host="web-1",
        pid=77,
        channels="comment_created,post_created",
        started_at=now - timedelta(hours=1),
        last_seen=now,
    )
    WorkerRecord.objects.create(
        name="web-2:88",
        host="web-2",
        pid=88,
        channels="post_created",
        started_at=now - timedelta(hours=1),
        last_seen=now - timedelta(minutes=2),
    )
    for worker in ("web-1:77", "web-1:77#2", "web-1:7", "web-2:88"):
        put("done", worker=worker, finished_at=now - timedelta(minutes=1))
    put("done", worker="web-1:77", finished_at=now - timedelta(hours=2))  # a namesake's
    put("dead", worker="web-1:77", finished_at=now - timedelta(minutes=1))
    batch = [put("pending").pk for _ in range(3)]
    InflightRecord.objects.create(
        worker="web-2:88#1",
        first_ids=[batch[0]],
        last_ids=[batch[2]],
        attempts=[0],
        started_at=now - timedelta(seconds=90),
    )
    InflightRecord.objects.create(  # web-1's last batch, committed long ago
        worker="web-1:77",
        first_ids=[1],
        last_ids=[1],
        attempts=[0],
        started_at=now - timedelta(minutes=3),
    )
    with psycopg.connect(database_url()) as claim:
        claim.execute("SELECT id FROM eventbus_event WHERE id = ANY(%s) FOR UPDATE", [batch])
        html = staff.get("/admin/eventbus/workerrecord/").content.decode()

    rows = {
        name: html.split(f">{name}</a>", 1)[1].split("</tr>")[0]
        for name in ("web-1:77", "web-2:88")
    }
    assert '<td class="field-handled_count">2</td>' in rows["web-1:77"]  # itself, its slot
    assert '<td class="field-handled_count">1</td>' in rows["web-2:88"]
    assert "eventbus-silent" not in rows["web-1:77"]
    assert 'class="eventbus-silent"' in rows["web-2:88"] and "silent for 2 min" in rows["web-2:88"]
    assert f"3 events (ids {batch[0]}-{batch[2]}) since" in rows["web-2:88"]
    assert "(1 min 3" in rows["web-2:88"]  # 90 s, and the test's own time
    assert "none (the last: 1 event," in rows["web-1:77"]
    assert "comment_created, post_created" in rows["web-1:77"]


def test_worker_rows_cannot_be_added_changed_or_deleted(staff: Client) -> None:
    WorkerRecord.objects.create(name="web-1:77", host="web-1", pid=77, channels="x")
    page = staff.get("/admin/eventbus/workerrecord/web-1_3A77/change/").content.decode()
    assert 'name="_save"' not in page and "deletelink" not in page
    assert (
        staff.post("/admin/eventbus/workerrecord/web-1_3A77/change/", {"pid": 1}).status_code == 403
    )
    assert staff.get("/admin/eventbus/workerrecord/web-1_3A77/delete/").status_code == 403
    assert staff.get("/admin/eventbus/workerrecord/add/").status_code == 403
    listing = staff.get("/admin/eventbus/workerrecord/").content.decode()
    assert "delete_selected" not in listing
    assert WorkerRecord.objects.get().pid == 77


slow_then_fine = Channel("test_admin_slow_then_fine", operations=())


@slow_then_fine.on
def _slow_then_fine(event: Event) -> None:
    time.sleep(0.05)
    if event.attempt == 1:
        raise ConnectionError("the relay hung up")


def test_an_event_page_shows_how_long_each_attempt_took(staff: Client) -> None:
    event_id = slow_then_fine.publish({})
    run_events([slow_then_fine.name], retries=True)
    record = EventRecord.objects.get(pk=event_id)
    assert (record.state, record.attempts) == ("done", 2)
    assert record.duration >= 0.05 and record.errors[0]["seconds"] >= 0.05
    page = staff.get(f"/admin/eventbus/eventrecord/{event_id}/change/").content.decode()
    took = re.findall(r"<td class='eventbus-nowrap'>([\d.]+ ms)</td>", page)
    assert len(took) == 2 and all(float(t.split()[0]) >= 50 for t in took), took


def test_an_event_whose_payload_python_cannot_decode_is_listed_and_shown(staff: Client) -> None:
    """PostgreSQL stores JSON nested thousands deep; Python's json stops at its recursion
    limit. Before: the list of events and the event's page answered 500."""
    deep = put("dead", last_error="MalformedEvent: its payload cannot be decoded")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE eventbus_event SET new = (repeat('[', 5000) || repeat(']', 5000))::json "
            "WHERE id = %s",
            [deep.pk],
        )
    page = staff.get("/admin/eventbus/eventrecord/")
    assert page.status_code == 200
    assert [e.pk for e in page.context["cl"].result_list] == [deep.pk]
    detail = staff.get(f"/admin/eventbus/eventrecord/{deep.pk}/change/")
    assert detail.status_code == 200
    assert b"not shown: Python cannot decode this payload" in detail.content
