"""Metrics, health, logs and progress: operators see what happens without reading code."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from blog.models import Post, PostTag, Tag
from eventbus.models import EventRecord, WorkerRecord
from tests.support import ROOT, Listener, free_port, manage, manage_env, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
StartListener = Callable[..., Listener]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_metrics_endpoint_counts_what_the_workers_do(
    start_listener: StartListener, author: User
) -> None:
    port = free_port()
    listener = start_listener(
        "--processes", "2", "--metrics-port", str(port), "--channels", "post_created", workers=2
    )
    for i in range(5):
        Post.objects.create(title=str(i), body="a b", author=author)
    EventRecord.objects.create(
        channel="post_created", operation="INSERT", table_name="x", new={"id": 999999}
    )  # its post does not exist: dead
    EventRecord.objects.create(
        channel="comment_created",
        operation="INSERT",
        table_name="x",
        new={},
        run_after=timezone.now() - timedelta(seconds=30),
    )
    wait_until(
        lambda: (
            value(scrape(port), "eventbus_events_handled_total", channel="post_created") == 5
            and value(scrape(port), "eventbus_events_dead_total", channel="post_created") == 1
        ),
        15,
        what="5 handled and 1 dead in the metrics (the two workers finish in any order)",
    )
    m = scrape(port)
    assert value(m, "eventbus_events_dead_total", channel="post_created") == 1
    assert value(m, "eventbus_events_failed_total", channel="post_created") == 1
    assert value(m, "eventbus_handler_duration_seconds_count", channel="post_created") == 6
    assert value(m, "eventbus_workers_alive") == 2
    assert value(m, "eventbus_backlog", channel="comment_created") == 1, "not handled here"
    assert value(m, "eventbus_oldest_due_seconds", channel="comment_created") >= 30
    # what holds back vacuum of the event table (eventbus.operating.horizon)
    assert ("eventbus_oldest_snapshot_seconds", ()) in m
    assert ("eventbus_oldest_xmin_age_xids", ()) in m
    # the queue's size (eventbus.storing): bounded while its slots rotate
    assert value(m, "eventbus_queue_bytes") > 0

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'eventbus-listen'"
        )
    wait_until(
        lambda: value(scrape(port), "eventbus_reconnects_total") >= 2,
        15,
        what=f"both reconnects counted; log:\n{listener.log()}",
    )
    os.kill(listener.worker_pids()[0], 9)
    wait_until(
        lambda: (
            value(scrape(port), "eventbus_workers_alive") == 1 or "restarting" in listener.log()
        ),
        10,
    )
    wait_until(lambda: value(scrape(port), "eventbus_workers_alive") == 2, 15)
    assert value(scrape(port), "eventbus_events_handled_total", channel="post_created") == 5, (
        "counts survive a worker's death"
    )


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return manage("eventbus_health", *args)


def test_the_health_command_reports_listener_and_backlog(
    start_listener: StartListener, author: User
) -> None:
    down = health()
    assert down.returncode == 1
    assert "unhealthy: no worker on any host sent a heartbeat in the last 30 s" in down.stderr

    listener = start_listener("--processes", "2", "--channels", "post_created", workers=2)
    up = health()
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("ok: 2 worker(s) alive on any host")
    assert health("--host", "elsewhere").returncode == 1
    own = health("--this-host", "--skip-backlog")  # a container's probe names its own host
    assert own.returncode == 0, own.stderr
    assert f"alive on {socket.gethostname()}" in own.stdout

    EventRecord.objects.create(
        channel="comment_created",
        operation="INSERT",
        table_name="x",
        new={},
        run_after=timezone.now() - timedelta(minutes=10),
    )
    stuck = health("--max-backlog-age", "300")
    assert stuck.returncode == 1
    waited = re.search(
        r"the oldest due comment_created event has waited (\d+) s \(> 300 s", stuck.stderr
    )
    assert waited and 600 <= int(waited.group(1)) < 660, stuck.stderr
    assert health("--skip-backlog").returncode == 0, "liveness ignores the backlog"

    assert listener.terminate() == 0
    assert health("--skip-backlog").returncode == 1, "a clean stop removes the heartbeats"


NEW_CHANNEL = "release_two_shipped"  # declared only by tests/release_two.py
NEW_RELEASE = {"EVENTBUS_LISTENER_MODULES": "listeners,tests.release_two"}


def unhandled_line(channel: str, n: int) -> str:
    events = "1 event" if n == 1 else f"{n} events"
    return f"channel {channel}: {events}, no handler in any running listener"


def test_health_events_and_metrics_name_the_channels_no_running_listener_handles(
    start_listener: StartListener,
) -> None:
    """Events that wait because no live listener handles their channel (a rolling deploy
    half done, a listener started with too few --channels) are visible, not silent."""
    port = free_port()
    start_listener("--channels", "post_created", "--metrics-port", str(port), workers=1)
    for channel in (NEW_CHANNEL, NEW_CHANNEL, NEW_CHANNEL, "comment_created"):
        EventRecord.objects.create(channel=channel, operation="PUBLISH", table_name="", new={})
    wait_until(  # a worker writes its heartbeat row just after it logs its start
        lambda: set(WorkerRecord.objects.values_list("channels", flat=True)) == {"post_created"},
        10,
        what="the worker's heartbeat row, listing the channels it handles",
    )

    ok = health()
    assert ok.returncode == 0, "by default a coverage gap warns: it does not fail a probe"
    assert f"warning: {unhandled_line('comment_created', 1)}; " in ok.stdout
    assert unhandled_line(NEW_CHANNEL, 3) in ok.stdout
    strict = health("--fail-unhandled")
    assert strict.returncode == 1
    assert strict.stderr.startswith(f"unhealthy: {unhandled_line('comment_created', 1)}; ")
    listing = manage("events")
    assert listing.returncode == 0, listing.stderr
    assert unhandled_line(NEW_CHANNEL, 3) in listing.stderr
    m = scrape(port)
    assert value(m, "eventbus_unhandled_events", channel=NEW_CHANNEL) == 3
    assert value(m, "eventbus_unhandled_events", channel="comment_created") == 1
    assert value(m, "eventbus_unhandled_events", channel="post_created") == 0

    start_listener("--channels", NEW_CHANNEL, env_extra=NEW_RELEASE, workers=1)
    wait_until(
        lambda: not EventRecord.objects.filter(channel=NEW_CHANNEL).exclude(state="done"),
        30,
        what="the new release's listener to handle its channel",
    )
    assert value(scrape(port), "eventbus_unhandled_events", channel=NEW_CHANNEL) == 0
    after = health("--fail-unhandled")
    assert NEW_CHANNEL not in after.stderr
    assert after.stderr.strip() == f"unhealthy: {unhandled_line('comment_created', 1)}"


def test_json_logs_carry_event_id_channel_attempt_and_duration(
    start_listener: StartListener, author: User
) -> None:
    listener = start_listener("--log-format", "json", workers=1)
    post = Post.objects.create(title="t", body="a", author=author)
    event = EventRecord.objects.get(channel="post_created")
    wait_until(lambda: f'"event_id": {event.pk}' in listener.log(), 10)
    lines = [json.loads(line) for line in listener.log().splitlines() if line.startswith("{")]
    [handled] = [line for line in lines if line.get("event_id") == event.pk]
    assert handled["channel"] == "post_created" and handled["attempt"] == 1
    assert handled["state"] == "done" and handled["duration_ms"] >= 0
    assert handled["message"].startswith(f"event {event.pk} post_created: handled")
    assert any(line["message"].endswith("started (channels: all)") for line in lines)
    assert post.pk


def _tag_links(author: User, n: int) -> None:
    tag = Tag.objects.create(name="t")
    posts = Post.objects.bulk_create(
        [Post(title=str(i), body="b", author=author) for i in range(n)]
    )
    PostTag.objects.bulk_create([PostTag(post=p, tag=tag) for p in posts])


def test_recover_shows_a_progress_bar_on_a_terminal(author: User) -> None:
    _tag_links(author, 300)  # 600 events
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "recover", "--batch-size", "50"],
        cwd=ROOT,
        env=manage_env(),
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    process.wait(60)
    os.close(master)
    screen = output.decode()
    assert "\r[" in screen and "] 600/600 100%" in screen
    assert screen.count("\r[") >= 10, "the bar moves"


def test_recover_prints_plain_progress_lines_when_not_on_a_terminal(author: User) -> None:
    _tag_links(author, 300)
    result = manage("recover", "--batch-size", "50")
    assert result.returncode == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("replayed ")]
    shares = [int(re.fullmatch(r"replayed \d+/600 \((\d+)%\)", line).group(1)) for line in lines]
    assert 8 <= len(shares) <= 10, lines  # about one line per 10 % step
    assert shares == sorted(shares) and shares[0] <= 20 and shares[-1] == 100, lines
    assert "\r" not in result.stderr
