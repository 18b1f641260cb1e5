"""The admin dashboard: its numbers are the event table's, and stay right after a purge."""

from __future__ import annotations

import math
import random
import re
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.utils import timezone

from eventbus import Channel, Event, RetryPolicy
from eventbus.models import EventRecord, PauseRecord, RollupRecord
from eventbus.operating import maintenance, rollup
from eventbus.testing import run_events

pytestmark = pytest.mark.django_db

URL = "/admin/eventbus/dashboard/"
BUCKET = 2**0.25  # the histogram's resolution
ONE_AND_A_HALF = timedelta(seconds=90)

# Two channels of known behaviour: `timed` sleeps as long as its event says and succeeds;
# `flaky` fails its first `fails` attempts (quickly), and has two attempts in all.
timed = Channel("test_dashboard_timed", operations=())
flaky = Channel(
    "test_dashboard_flaky", operations=(), retry=RetryPolicy(max_attempts=2, jitter=False)
)


@timed.on
def _sleep(event: Event) -> None:
    time.sleep(event.row["ms"] / 1000)


@flaky.on
def _fail(event: Event) -> None:
    if event.attempt <= event.row["fails"]:
        raise ConnectionError(f"the relay refused (attempt {event.attempt})")


@pytest.fixture
def staff(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def table(channel: str) -> dict[str, int]:
    """What the event table says of a channel: the dashboard must say the same."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE state = 'done'), "
            "coalesce(sum(attempts - CASE WHEN state IN ('done', 'dead') THEN 1 ELSE 0 END), 0), "
            "count(*) FILTER (WHERE state = 'dead'), "
            "count(*) FILTER (WHERE state IN ('pending', 'failed')), "
            "count(*) FILTER (WHERE state = 'failed') "
            "FROM eventbus_event WHERE channel = %s",
            [channel],
        )
        done, failed_attempts, dead, backlog, failed = cursor.fetchone()
    return {
        "handled": done,
        "failed_attempts": failed_attempts,
        "died": dead,
        "dead": dead,
        "backlog": backlog,
        "failed": failed,
    }


def shown(page: str, queue: str) -> dict[str, str]:
    """The printed cells of a queue's row."""
    found = re.search(rf'<tr data-queue="{re.escape(queue)}".*?</tr>', page, re.S)
    assert found, f"no row for {queue}"
    return {
        name: re.sub(r"<[^>]+>", "", cell).strip()
        for name, cell in re.findall(
            r'<td class="number ([a-z0-9-]+)">(.*?)</td>', found.group(0), re.S
        )
    }


def row(response: object, queue: str) -> object:
    [found] = [r for r in response.context["overview"].rows if r.queue == queue]  # type: ignore[attr-defined]
    return found


def test_the_dashboards_numbers_are_the_event_tables_and_survive_the_purge(
    staff: Client,
) -> None:
    for ms in [2] * 18 + [50] * 2:  # p50 2 ms, p95 50 ms
        timed.publish({"ms": ms})
    for fails in [0] * 4 + [1] * 3 + [2] * 2:  # 4 done, 3 done on their retry, 2 dead
        flaky.publish({"fails": fails})
    run_events(retries=True)
    flaky.publish({"fails": 1})  # left failed, waiting for its retry
    run_events()
    timed.publish({"ms": 0})  # two left pending: the backlog, the older due 90 s ago
    timed.publish({"ms": 0})
    oldest = EventRecord.objects.filter(channel=timed.name, state="pending").earliest("id")
    EventRecord.objects.filter(pk=oldest.pk).update(run_after=oldest.run_after - ONE_AND_A_HALF)

    page = staff.get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    for channel in (timed.name, flaky.name):
        expected = table(channel)
        counted = row(page, channel)
        for name, value in expected.items():
            assert getattr(counted, name) == value, (channel, name)
        assert shown(html, channel)["handled"] == str(expected["handled"])
        assert shown(html, channel)["backlog"] == str(expected["backlog"])
        assert shown(html, channel)["failed"] == str(expected["failed"])
        assert shown(html, channel)["dead"] == str(expected["dead"])
    # all 20 within the window: 4 whole minutes and the part of this one gone by
    per_minute = row(page, timed.name).per_minute
    assert 20 / 5 <= per_minute <= 20 / 4
    assert shown(html, timed.name)["per-minute"] == f"{per_minute:.1f}"
    assert row(page, timed.name).oldest_due == pytest.approx(90, abs=1)
    assert shown(html, timed.name)["oldest-due"] == "1.5 min"
    # Handler durations, to within a bucket (a factor of 2 ** 0.25) of the truth.
    assert 0.002 / BUCKET <= row(page, timed.name).p50 < 0.025
    assert 0.050 / BUCKET <= row(page, timed.name).p95 < 0.200
    assert re.fullmatch(r"\d\d(\.\d)? ms", shown(html, timed.name)["p95"])
    # The failures chart of one channel counts its failed and dead attempts.
    one = staff.get(URL, {"queue": flaky.name})
    expected = table(flaky.name)
    assert sum(one.context["overview"].hour.failures) == (
        expected["failed_attempts"] + expected["died"]
    )
    assert sum(one.context["overview"].hour.handled) == expected["handled"]
    assert sum(one.context["overview"].day.handled) == expected["handled"]

    # The listeners' retention, a week on: history partitions dropped whole.
    purged = maintenance.purge_expired(86400, now=timezone.now() + timedelta(days=7))
    assert purged == 20 + 7 and not EventRecord.objects.filter(state="done").exists()
    after = staff.get(URL)
    for channel, handled in ((timed.name, 20), (flaky.name, 7)):
        assert row(after, channel).handled == handled
        assert shown(after.content.decode(), channel)["handled"] == str(handled)
    assert row(after, timed.name).p95 == row(page, timed.name).p95


def test_the_backlog_chart_shows_the_minutes_sample(staff: Client) -> None:
    for _ in range(3):
        timed.publish({"ms": 0})
    rollup.sample([timed.name, flaky.name])
    rollup.sample([timed.name, flaky.name])  # a second listener finds the minute taken
    hour = staff.get(URL, {"queue": timed.name}).context["overview"].hour
    assert hour.backlog[-1] == 3
    assert hour.backlog[:-1] == [None] * 59, "no sample, no point: a gap, not a zero"
    samples = RollupRecord.objects.filter(backlog__isnull=False)
    assert {(r.queue, r.backlog) for r in samples} >= {(timed.name, 3), (flaky.name, 0)}


def test_rollup_minutes_older_than_the_retention_are_purged() -> None:
    now = timezone.now().replace(second=0, microsecond=0)
    for age in (timedelta(days=8), timedelta(days=6)):
        RollupRecord.objects.create(minute=now - age, queue=timed.name, handled=1)
    assert rollup.purge_expired(7 * 86400) == 1
    assert [now - r.minute for r in RollupRecord.objects.all()] == [timedelta(days=6)]


def test_percentiles_from_the_histogram_are_within_a_bucket_of_the_truth() -> None:
    rng = random.Random(14)
    for _ in range(20):
        durations = [math.exp(rng.gauss(math.log(0.01), 1.5)) for _ in range(500)]
        buckets = [0] * rollup.BUCKETS
        for seconds in durations:
            buckets[rollup.bucket(seconds)] += 1
        ranked = sorted(durations)
        for fraction in (0.5, 0.95):
            truth = ranked[math.ceil(fraction * len(ranked)) - 1]
            estimate = rollup.percentile(buckets, fraction)
            assert estimate is not None
            assert truth / BUCKET <= estimate <= truth * BUCKET, (fraction, truth)
    assert rollup.percentile([0] * rollup.BUCKETS, 0.5) is None


def test_the_dashboard_is_on_the_admin_index(staff: Client) -> None:
    index = staff.get("/admin/").content.decode()
    assert f'href="{URL}"' in index and ">Dashboard<" in index
    page = staff.get(URL).content.decode()
    assert '<meta http-equiv="refresh" content="10">' in page
    charts = page.count('<svg class="eb-chart"')
    assert charts == 6, "throughput, backlog and failures, for an hour and a day"
    assert '<meta http-equiv="refresh"' not in staff.get(URL, {"refresh": "0"}).content.decode()


def test_pause_and_resume_from_the_dashboard(staff: Client) -> None:
    response = staff.post(f"{URL}pause/", {"name": flaky.name})
    assert response.status_code == 302
    assert PauseRecord.objects.filter(name=flaky.name).exists()
    page = staff.get(URL)
    assert row(page, flaky.name).paused_by == flaky.name
    assert f'<tr data-queue="{flaky.name}" class="paused">' in page.content.decode()
    staff.post(f"{URL}resume/", {"name": flaky.name})
    assert not PauseRecord.objects.exists()
    assert staff.get(f"{URL}pause/").status_code == 405, "a GET changes nothing"


def test_pausing_needs_a_csrf_token_and_the_change_permission() -> None:
    guarded = Client(enforce_csrf_checks=True)
    guarded.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    assert guarded.post(f"{URL}pause/", {"name": flaky.name}).status_code == 403
    assert not PauseRecord.objects.exists()

    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    client = Client()
    client.force_login(viewer)
    page = client.get(URL)
    assert page.status_code == 200 and b'name="name"' not in page.content, "no buttons"
    assert client.post(f"{URL}pause/", {"name": flaky.name}).status_code == 403
    assert not PauseRecord.objects.exists()
    nobody = User.objects.create_user("nobody", is_staff=True)
    client.force_login(nobody)
    assert client.get(URL).status_code == 403
