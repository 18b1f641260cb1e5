"""`./run screenshots`: the README's pictures of the admin, taken by the browser specs'
harness against a live server (not collected by `./run test`: the name is no test_*).

Writes PNGs to docs/screenshots/ (or $SCREENSHOTS_DIR). The dashboard's picture is taken
once the dashboard exists (issue 14, §1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings

from eventbus.models import EventRecord, InflightRecord, WorkerRecord
from tests import browser as harness
from tests.support import ROOT, database_url
from tests.test_admin_browser import PASSWORD, dead_comment_event

pytestmark = pytest.mark.django_db(transaction=True)

OUT = Path(os.environ.get("SCREENSHOTS_DIR") or ROOT / "docs" / "screenshots")


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    reason = harness.unavailable()
    if reason:
        pytest.fail(f"no screenshots: {reason}")
    started = harness.start()
    yield started
    started.quit()


@pytest.fixture
def operator(live_server: Any, driver: Any) -> Any:
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    driver.set_window_size(harness.WIDTH, harness.HEIGHT)
    harness.log_in(driver, live_server.url, "operator", PASSWORD)
    return driver


def test_event_page_list_and_workers(operator: Any, live_server: Any, settings: Settings) -> None:
    event = dead_comment_event(settings)
    now = timezone.now()
    WorkerRecord.objects.create(
        name="web-1:2817",
        host="web-1",
        pid=2817,
        channels="comment_created,post_created",
        started_at=now - timedelta(hours=1),
    )
    WorkerRecord.objects.create(
        name="web-2:904",
        host="web-2",
        pid=904,
        channels="comment_created,post_created",
        started_at=now - timedelta(hours=2),
        last_seen=now - timedelta(seconds=95),
    )
    stuck = EventRecord.objects.create(  # what web-2 was handling when it hung
        channel="post_created", operation="INSERT", table_name="blog_post", key="9", new={"id": 9}
    )
    InflightRecord.objects.create(
        worker="web-2:904",
        first_ids=[stuck.pk],
        last_ids=[stuck.pk],
        attempts=[0],
        started_at=now - timedelta(seconds=97),
    )
    for minutes in (1, 2, 3):  # web-1 has handled three events
        EventRecord.objects.create(
            channel="post_created",
            operation="INSERT",
            table_name="blog_post",
            key=str(minutes),
            new={"id": minutes},
            state="done",
            attempts=1,
            worker="web-1:2817",
            first_claimed_at=now - timedelta(minutes=minutes, seconds=-0.002),
            finished_at=now - timedelta(minutes=minutes),
        )
    # The nav sidebar closed, as an operator with a narrower screen would keep it.
    operator.execute_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
    pages = {
        "event.png": f"/admin/eventbus/eventrecord/{event.pk}/change/",
        "events.png": "/admin/eventbus/eventrecord/",
        "workers.png": "/admin/eventbus/workerrecord/",
    }
    # web-2 is hung in the middle of its batch: its claim still holds the event.
    with psycopg.connect(database_url()) as claim:
        claim.execute("SELECT id FROM eventbus_event WHERE id = %s FOR UPDATE", [stuck.pk])
        for name, path in pages.items():
            operator.get(live_server.url + path)
            harness.screenshot(operator, OUT / name, width=1440)
    assert all((OUT / name).stat().st_size > 0 for name in pages)


def test_dashboard(operator: Any, live_server: Any, settings: Settings) -> None:
    """The dashboard after a small workload: posts handled and waiting, a dead comment."""
    from blog.models import Post
    from eventbus.testing import run_events

    dead_comment_event(settings)
    author = User.objects.get(username="ada")
    for n in range(40):
        Post.objects.create(title=f"p{n}", body="one two three " * n, author=author)
    run_events(["post_created", "post_tags_changed"])
    for n in range(5):
        Post.objects.create(title=f"q{n}", body="waiting", author=author)
    url = reverse("admin:eventbus_dashboard_changelist")
    operator.get(f"{live_server.url}{url}?refresh=0")
    harness.screenshot(operator, OUT / "dashboard.png", width=1440)
