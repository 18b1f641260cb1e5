"""The admin in a real browser: a headless Chromium, driven by Selenium, against
pytest-django's live server.

One browser for the module; each spec logs in through the login form. The specs skip,
saying why, only where no browser can be had (tests/browser.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from pytest_django.fixtures import Settings

from blog.models import Comment, Post
from eventbus.models import EventRecord, InflightRecord, WorkerRecord
from eventbus.testing import run_events
from tests import browser as harness
from tests.support import database_url, free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = harness.unavailable()
    if reason:
        pytest.skip(reason)
    driver = harness.start()
    yield driver
    driver.quit()


@pytest.fixture
def operator(live_server: Any, browser: Any) -> Any:
    """The browser, logged in as a superuser through the login form, at 1600 px."""
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    browser.set_window_size(harness.WIDTH, harness.HEIGHT)
    harness.log_in(browser, live_server.url, "operator", PASSWORD)
    return browser


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def dead_comment_event(settings: Settings) -> EventRecord:
    """A comment whose email could not be sent: its event dead after 3 real attempts,
    with the tracebacks the engine stored."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nobody listens
    settings.EVENTBUS = {**settings.EVENTBUS, "RETRY": {"max_attempts": 3}}
    author = User.objects.create_user("ada", "ada@example.com")
    reader = User.objects.create_user("bob", "bob@example.com")
    post = Post.objects.create(title="Engines", body="the analytical engine", author=author)
    Comment.objects.create(post=post, author=reader, body="Weaves algebraic patterns")
    run_events(["comment_created"], retries=True)
    event = EventRecord.objects.get(channel="comment_created")
    assert (event.state, event.attempts) == ("dead", 3), event.last_error
    return event


def test_an_operator_logs_in_and_finds_events_and_workers(operator: Any) -> None:
    from selenium.webdriver.common.by import By

    assert by_css(operator, "#user-tools").text.upper().startswith("WELCOME")
    models = {a.text for a in operator.find_elements(By.CSS_SELECTOR, "#content-main th a")}
    assert {"Events", "Workers"} <= models, models


def test_a_dead_event_shows_its_traceback_and_retry_makes_it_pending(
    operator: Any, live_server: Any, settings: Settings
) -> None:
    event = dead_comment_event(settings)
    operator.get(f"{live_server.url}/admin/eventbus/eventrecord/{event.pk}/change/")

    # Read-only: no form buttons, no delete.
    assert not all_css(operator, "input[name=_save], input[name=_continue], .deletelink")
    assert by_css(operator, ".field-state_detail .readonly").text == "dead"

    # The error is readable text: one line per line, inside the window, not JSON.
    error = by_css(operator, ".field-current_error pre")
    lines = error.text.splitlines()
    assert lines[0].startswith("ConnectionRefusedError"), lines[0]
    assert any(line.strip().startswith('File "') for line in lines), lines
    assert "\\n" not in error.text and '"error":' not in error.text
    assert harness.right_edge(operator, error) <= harness.inner_width(operator)
    # Every attempt with its own traceback, and the row that made the event.
    attempts = all_css(operator, ".eventbus-attempts tbody tr")
    assert [row.find_element("css selector", "td").text for row in attempts] == ["1", "2", "3"]
    assert all("ConnectionRefusedError" in row.text for row in attempts)
    comment = Comment.objects.get()
    link = by_css(operator, ".field-source_row a")
    assert link.get_attribute("href").endswith(f"/admin/blog/comment/{comment.pk}/change/")

    by_css(operator, "#eventbus-retry").click()
    message = harness.wait_for(
        operator, lambda: by_css(operator, ".messagelist .success"), "the retry's message"
    )
    assert message.text == f"Event {event.pk} re-queued: pending, due now."
    assert by_css(operator, ".field-state_detail .readonly").text == "pending"
    assert not all_css(operator, ".field-current_error pre")  # its old error is history now
    event.refresh_from_db()
    assert (event.state, event.attempts) == ("pending", 3)


def test_a_long_error_is_seen_whole_at_1600_pixels_and_nothing_offers_to_delete(
    operator: Any, live_server: Any
) -> None:
    url = "https://hooks.example.com/" + "a1b2c3d4" * 30  # one line, no space in it
    error = f"TimeoutError: the SMTP relay did not answer within 10 s {url}\n  File ..."
    dead = EventRecord.objects.create(
        channel="post_categories_changed",
        operation="INSERT",
        table_name="blog_post_categories",
        key=str(uuid.uuid4()),
        new={"id": 1},
        state="dead",
        attempts=10,
        last_error=error,
        worker="a-rather-long-host-name.example.internal:123456#12",
        finished_at=timezone.now(),
    )
    operator.get(f"{live_server.url}/admin/eventbus/eventrecord/")
    cell = by_css(operator, f"#result_list tr:has(a[href*='/{dead.pk}/']) td.field-error_summary")
    assert cell.text.startswith("TimeoutError: the SMTP relay")
    # Seen whole: inside the window, and inside the list's own scrolling box.
    results = by_css(operator, "#changelist .results")
    assert harness.right_edge(operator, cell) <= harness.right_edge(operator, results)
    assert harness.right_edge(operator, results) <= harness.inner_width(operator)
    assert operator.execute_script(
        "return arguments[0].scrollWidth <= arguments[0].clientWidth", results
    ), "the list scrolls sideways"
    actions = [o.get_attribute("value") for o in all_css(operator, "select[name=action] option")]
    assert "delete_selected" not in actions
    assert {"retry_events", "discard_events"} <= set(actions)

    # On its page, the error wraps instead of running off to the right.
    operator.get(f"{live_server.url}/admin/eventbus/eventrecord/{dead.pk}/change/")
    text = by_css(operator, ".field-current_error pre")
    assert url in text.text.replace("\n", "")
    assert harness.right_edge(operator, text) <= harness.inner_width(operator)
    assert operator.execute_script(
        "return arguments[0].scrollWidth <= arguments[0].clientWidth", text
    ), "the error scrolls sideways"


def test_the_workers_page_shows_a_live_listener_and_marks_a_hung_one(
    operator: Any, live_server: Any, start_listener: Any
) -> None:
    listener = start_listener(workers=1)
    live = wait_until(lambda: WorkerRecord.objects.first(), what="the worker's heartbeat row")
    author = User.objects.create_user("ada", "ada@example.com")
    reader = User.objects.create_user("bob", "bob@example.com")
    post = Post.objects.create(title="Engines", body="the analytical engine", author=author)
    Comment.objects.create(post=post, author=reader, body="Weaves algebraic patterns")
    wait_until(  # the post's event and the comment's
        lambda: EventRecord.objects.filter(state="done").count() == 2,
        what=f"the post's and the comment's events handled; log:\n{listener.log()}",
    )

    # A worker that stopped beating 40 s ago while it holds a batch: its claim still
    # locks the event (a second connection holds the row, as a hung worker's would).
    now = timezone.now()
    held = EventRecord.objects.create(
        channel="legacy_channel", operation="INSERT", table_name="t", new={"id": 1}
    )
    WorkerRecord.objects.create(
        name="ghost:4242",
        host="ghost",
        pid=4242,
        channels="legacy_channel",
        started_at=now - timedelta(minutes=5),
        last_seen=now - timedelta(seconds=40),
    )
    InflightRecord.objects.create(
        worker="ghost:4242",
        first_ids=[held.pk],
        last_ids=[held.pk],
        attempts=[0],
        started_at=now - timedelta(seconds=20),
    )
    with psycopg.connect(database_url()) as claim:
        claim.execute("SELECT id FROM eventbus_event WHERE id = %s FOR UPDATE", [held.pk])
        operator.get(f"{live_server.url}/admin/eventbus/workerrecord/")
        live_row = by_css(operator, f"#result_list tr:has(a[href*='/{quote(live.name)}/'])")
        ghost_row = by_css(operator, "#result_list tr:has(a[href*='/ghost_3A4242/'])")
        live_text, ghost_text = live_row.text, ghost_row.text
        colours = [
            operator.execute_script(
                "return getComputedStyle(arguments[0].querySelector('td')).backgroundColor", row
            )
            for row in (live_row, ghost_row)
        ]

    cells = {
        name: by_css(live_row, f"td.field-{name}").text
        for name in ("host", "pid", "channel_list", "handled_count", "current_batch")
    }
    assert cells["host"] == live.host and cells["pid"] == str(live.pid)
    assert "comment_created" in cells["channel_list"]
    assert cells["handled_count"] == "2"
    assert cells["current_batch"].startswith("none")
    assert "silent" not in live_text and "ago)" in live_text
    assert "silent for 40" in ghost_text
    assert f"1 event (ids {held.pk}-{held.pk}) since" in ghost_text
    assert colours[0] != colours[1], colours  # the hung one stands out

    # Heartbeat rows are the workers' own: no add, no delete, nothing to save.
    assert not all_css(operator, ".object-tools .addlink, #changelist-form select[name=action]")
    operator.get(f"{live_server.url}/admin/eventbus/workerrecord/ghost_3A4242/change/")
    assert not all_css(operator, "input[name=_save], .deletelink")
    assert "silent for" in by_css(operator, ".field-seen .readonly").text


# The dashboard (issue 14, §1 and §3): its numbers against the event table; pause and
# resume of a channel.
DASHBOARD_URL_NAME = "admin:eventbus_dashboard_changelist"


def dashboard_url() -> str:
    try:
        return reverse(DASHBOARD_URL_NAME)
    except NoReverseMatch:
        pytest.skip(f"no dashboard yet: {DASHBOARD_URL_NAME} is not a URL (issue 14, §1)")


def test_the_dashboard_opens_from_the_admin_index(operator: Any, live_server: Any) -> None:
    url = dashboard_url()
    operator.get(f"{live_server.url}/admin/")
    assert all_css(operator, f"a[href='{url}']"), "the admin index links to the dashboard"


def shown_cells(operator: Any, queue: str) -> dict[str, str]:
    """The dashboard's number cells of a queue's row, as the browser shows them."""
    row = by_css(operator, f"tr[data-queue='{queue}']")
    names = ("handled", "backlog", "failed", "dead")
    return {name: row.find_element("css selector", f"td.{name}").text for name in names}


def test_the_dashboards_numbers_are_the_event_tables(
    operator: Any, live_server: Any, settings: Settings
) -> None:
    url = dashboard_url()
    dead = dead_comment_event(settings)  # 1 dead after 3 attempts
    author = User.objects.get(username="ada")
    for n in range(3):  # 3 handled, then 2 left pending
        Post.objects.create(title=f"p{n}", body="one two", author=author)
    run_events(["post_created"])
    for n in range(2):
        Post.objects.create(title=f"q{n}", body="one two", author=author)

    operator.get(f"{live_server.url}{url}?refresh=0")
    for channel in ("comment_created", "post_created"):
        events = EventRecord.objects.filter(channel=channel)
        expected = {
            "handled": str(events.filter(state="done").count()),
            "backlog": str(events.filter(state__in=("pending", "failed")).count()),
            "failed": str(events.filter(state="failed").count()),
            "dead": str(events.filter(state="dead").count()),
        }
        assert shown_cells(operator, channel) == expected, channel
    assert shown_cells(operator, "post_created")["backlog"] == "2"
    assert shown_cells(operator, "comment_created")["dead"] == "1" and dead.state == "dead"


def test_pausing_and_resuming_a_channel_from_the_dashboard(operator: Any, live_server: Any) -> None:
    from eventbus.operating import pauses

    url = dashboard_url()
    operator.get(f"{live_server.url}{url}?refresh=0")
    by_css(operator, "tr[data-queue='comment_created'] button.pause").click()
    wait_until(lambda: all_css(operator, "tr[data-queue='comment_created'] button.resume"), 10)
    assert [p.name for p in pauses.paused()] == ["comment_created"]
    by_css(operator, "tr[data-queue='comment_created'] button.resume").click()
    wait_until(lambda: all_css(operator, "tr[data-queue='comment_created'] button.pause"), 10)
    assert pauses.paused() == []
