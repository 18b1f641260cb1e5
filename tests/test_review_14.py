"""Review of issue 14 (the operator's console): failing specs for what it got wrong.

Each spec names the behaviour an operator relies on, against real PostgreSQL, real
listener processes and the real admin.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core import checks
from django.db import connection, connections
from django.test import Client, override_settings

from blog.models import Post
from eventbus import sql
from eventbus.event import DONE
from eventbus.models import EventRecord
from eventbus.operating import rollup
from eventbus.testing import run_events
from tests import alerting
from tests.alerting import doomed
from tests.support import Listener, database_url, wait_until


@pytest.fixture
def staff(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


# --- The rollup's row lock ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_worker_stalled_after_its_mark_does_not_hold_up_other_listeners_of_its_channel(
    start_listener: Callable[..., Listener], author: User
) -> None:
    """Before issue 14, listeners of one channel were independent (SKIP LOCKED): one that
    froze mid-batch (a GC pause, a VM stall, SIGSTOP, a network stall before its COMMIT)
    held only its own events. Now every mark updates the one (minute, channel) rollup row,
    and keeps it locked until its commit: a worker frozen between its mark and its commit
    stops every other worker's mark of that channel, for up to its idle timeout (the
    longest handler timeout + 30 s; forever where a channel has no timeout)."""
    frozen = psycopg.connect(database_url())
    try:
        # What a worker's claim transaction holds after its mark statement, before COMMIT:
        # the rollup rows of its channel. (Three minutes, so the spec cannot straddle one.)
        done = SimpleNamespace(channel="post_created", status=DONE, seconds=0.01)
        marked = rollup.rows([done], "frozen-worker")
        frozen.execute(*sql.mark_done("frozen-worker", [], marked, []))
        frozen.execute(
            "INSERT INTO eventbus_rollup (minute, queue, writer, handled, failed, died, "
            "seconds, histogram) SELECT date_trunc('minute', now()) + make_interval(mins => m), "
            "'post_created', 'frozen-worker', 1, 0, 0, 0, '{}' FROM generate_series(1, 2) AS m"
        )
        listener = start_listener("--poll-interval", "1", workers=1)
        post = Post.objects.create(title="t", body="one two", author=author)
        wait_until(
            lambda: EventRecord.objects.filter(
                channel="post_created", key=str(post.pk), state="done"
            ).exists(),
            15,
            what=f"another listener's event handled while one worker is frozen; log:\n"
            f"{listener.log()}",
        )
    finally:
        frozen.close()


# --- The dashboard's durations -----------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_never_shows_a_p95_below_what_the_handlers_took(staff: Client) -> None:
    """A channel whose handlers take 4 minutes (a report, an export; HANDLER_TIMEOUT raised
    for it) shows p50 and p95 of "1.7 min": the histogram's last bucket (105 s and over)
    answers with its lower bound, and the page prints it as a duration. An operator reads
    the handlers as four times faster than they are; the page must say "over 105 s" (or
    the like), never a number below the truth."""
    slow = [SimpleNamespace(channel="post_created", status=DONE, seconds=240.0)] * 10
    with connection.cursor() as cursor:
        cursor.execute(*sql.mark_done("w", [], rollup.rows(slow, "w"), []))
    page = staff.get("/admin/eventbus/dashboard/")
    [row] = [r for r in page.context["overview"].rows if r.queue == "post_created"]
    assert row.p95 is None or row.p95 >= 240.0, f"p95 shown as {row.p95} s for 240 s handlers"


# --- Retry of an event a worker holds ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retry_of_an_event_a_worker_holds_is_not_offered_and_never_waits_for_the_worker(
    staff: Client,
) -> None:
    """Discard is hidden while a worker holds a failed event, but Retry is not, and
    pressing it blocks the admin request on the worker's row lock for as long as the
    handler runs (up to its timeout), then reports "it is failed, not failed or dead"
    when the handler succeeded meanwhile."""
    held = EventRecord.objects.create(
        channel="comment_created",
        state="failed",
        operation="INSERT",
        table_name="t",
        new={"id": 7},
        attempts=1,
        last_error="Boom",
    )
    page_url = f"/admin/eventbus/eventrecord/{held.pk}/change/"
    answered: list[float] = []

    def press_retry() -> None:
        began = time.monotonic()
        browser = Client()
        browser.force_login(User.objects.get(username="admin"))
        try:
            browser.post(f"/admin/eventbus/eventrecord/{held.pk}/retry/")
            answered.append(time.monotonic() - began)
        finally:
            connections.close_all()  # this thread's own connection

    with psycopg.connect(database_url()) as claim:  # a worker's claim holds the row
        claim.execute("SELECT id FROM eventbus_event WHERE id = %s FOR UPDATE", [held.pk])
        page = staff.get(page_url).content.decode()
        assert "running: a worker holds it now" in page
        offered = f'/{held.pk}/retry/"' in page
        pressing = threading.Thread(target=press_retry, daemon=True)
        pressing.start()
        pressing.join(5)  # the handler "runs" for longer than this
        waited = pressing.is_alive()
    pressing.join(30)
    assert (offered, waited) == (False, False), (
        f"Retry offered: {offered}; the request waited for the worker: {waited} "
        f"(answered after {answered} s, once the worker let go)"
    )


# --- Handled per minute ------------------------------------------------------------------------


def _seconds_into_the_minute() -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(second FROM statement_timestamp())::float8")
        return float(cursor.fetchone()[0])


@pytest.mark.django_db
def test_handled_per_minute_of_a_steady_flow_is_its_rate_whatever_the_second(
    staff: Client,
) -> None:
    """ "Handled per minute (the mean of the last 5 minutes)" sums the current minute,
    partial, with the 4 before it and divides by 5: a steady 100 a minute shows as 80 at
    the start of each minute, rising to 100 at its end (a saw tooth, up to 20 % low)."""
    wait_until(lambda: _seconds_into_the_minute() < 25, 40, what="the first half of a minute")
    elapsed = _seconds_into_the_minute() / 60
    with connection.cursor() as cursor:  # 100 a minute for the last hour, up to now
        cursor.execute(
            "INSERT INTO eventbus_rollup (minute, queue, handled, failed, died, seconds, "
            "histogram) SELECT date_trunc('minute', statement_timestamp()) "
            "- make_interval(mins => m), "
            "'post_created', CASE WHEN m = 0 THEN %s ELSE 100 END, 0, 0, 0, '{}' "
            "FROM generate_series(0, 59) AS m",
            [round(100 * elapsed)],
        )
    page = staff.get("/admin/eventbus/dashboard/")
    [row] = [r for r in page.context["overview"].rows if r.queue == "post_created"]
    assert row.per_minute == pytest.approx(100, rel=0.05), (
        f"a steady 100/min shown as {row.per_minute}/min, {elapsed * 60:.0f} s into the minute"
    )


# --- Alerts on death ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_dead_alerts_admin_link_opens_the_event_without_admin_base_url() -> None:
    """With DEAD_ALERT set and ADMIN_BASE_URL left at its default (""), the alert's
    `admin_url` is "/admin/eventbus/eventrecord/5/change/": a path, not a link a mail
    client or a pager can open, and nothing (no check, no log line) says so. It should be
    absolute, or None with a warning at start-up (a system check)."""

    alerting.received.clear()
    doomed.publish({})
    with override_settings(EVENTBUS={"DEAD_ALERT": "tests.alerting.record"}):
        run_events(["alert_doomed"])
        warned = [m for m in checks.run_checks() if "ADMIN_BASE_URL" in m.msg]
    [alert] = alerting.received
    assert warned or alert.admin_url is None or alert.admin_url.startswith("http"), (
        f"admin_url {alert.admin_url!r}, and no check warns"
    )
