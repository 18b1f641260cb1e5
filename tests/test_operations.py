"""Operators see and steer events: `events` lists, re-queues and purges; history expires."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest
from django.utils import timezone

from eventbus.models import EventRecord
from eventbus.storing import upkeep
from tests.support import Listener, database_url, manage, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def put(state: str, channel: str = "comment_created", **fields: object) -> EventRecord:
    return EventRecord.objects.create(
        channel=channel,
        operation="INSERT",
        table_name="blog_comment",
        new={},
        state=state,
        **fields,
    )


def listed(*args: str) -> list[dict]:
    result = manage("events", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_events_lists_and_filters_as_json_and_as_a_table() -> None:
    done = put("done", finished_at=timezone.now())
    dead = put("dead", last_error="RowGone: post 1 no longer exists\n  File ...", attempts=3)
    failed = put("failed", channel="post_created", attempts=1)
    assert [e["id"] for e in listed()] == [failed.pk, dead.pk, done.pk]
    assert [e["id"] for e in listed("--state", "dead")] == [dead.pk]
    assert [e["id"] for e in listed("--channel", "post_created")] == [failed.pk]
    assert [e["id"] for e in listed("--id", str(done.pk))] == [done.pk]
    [row] = listed("--id", str(dead.pk))
    assert row["state"] == "dead" and row["attempts"] == 3
    assert row["last_error"].startswith("RowGone")
    assert set(row) >= {"key", "created_at", "first_claimed_at", "finished_at", "worker"}

    table = manage("events").stdout.splitlines()
    assert table[0].split() == [
        "id",
        "channel",
        "key",
        "state",
        "attempts",
        "created_at",
        "finished_at",
        "worker",
        "last_error",
    ]
    assert any(
        line.startswith(str(dead.pk)) and "RowGone: post 1 no longer exists" in line
        for line in table
    )
    bad = manage("events", "--state", "bogus")
    assert bad.returncode != 0 and "unknown state(s): bogus" in bad.stderr


def test_an_event_a_worker_holds_shows_as_running() -> None:
    event = put("pending")
    with psycopg.connect(database_url()) as worker:  # a claim in progress
        worker.execute("SELECT 1 FROM eventbus_event WHERE id = %s FOR UPDATE", [event.pk])
        assert listed("--id", str(event.pk))[0]["state"] == "running"
        assert [e["id"] for e in listed("--state", "running")] == [event.pk]
    assert listed("--id", str(event.pk))[0]["state"] == "pending"


def test_events_retry_requeues_by_id_or_by_state_and_channel_and_wakes_listeners() -> None:
    dead, failed, done = put("dead", attempts=10), put("failed", attempts=2), put("done")
    other = put("failed", channel="post_created")
    with psycopg.connect(database_url(), autocommit=True) as listen:
        listen.execute("LISTEN eventbus_comment_created")
        result = manage("events", "retry", str(dead.pk), str(done.pk))
        assert [n.channel for n in listen.notifies(timeout=2, stop_after=1)] == [
            "eventbus_comment_created"
        ]
    assert f"re-queued 1 event(s): {dead.pk}" in result.stdout
    assert (
        f"not re-queued (not failed or dead, a worker is handling it, or unknown): {done.pk}"
        in (result.stderr)
    )
    dead.refresh_from_db()
    assert (dead.state, dead.attempts, dead.finished_at) == ("pending", 10, None)
    assert dead.run_after <= timezone.now()

    by_filter = manage("events", "retry", "--state", "failed", "--channel", "comment_created")
    assert f"re-queued 1 event(s): {failed.pk}" in by_filter.stdout
    assert EventRecord.objects.get(pk=other.pk).state == "failed", "other channels untouched"
    assert manage("events", "retry").returncode != 0, "retrying everything must be explicit"


def test_events_purge_deletes_old_finished_history_in_batches() -> None:
    old = timezone.now() - timedelta(days=40)
    old_done = [put("done", finished_at=old) for _ in range(5)]
    recent_done = put("done", finished_at=timezone.now())
    old_dead = put("dead", finished_at=old)
    pending = put("pending")
    result = manage("events", "purge", "--older-than", "30d", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "purged 5 done event(s) finished more than 30d ago" in result.stdout
    left = set(EventRecord.objects.values_list("pk", flat=True))
    assert left == {recent_done.pk, old_dead.pk, pending.pk}
    assert not left & {e.pk for e in old_done}
    assert (
        "purged 1 dead"
        in manage("events", "purge", "--older-than", "30d", "--state", "dead").stdout
    )
    refused = manage("events", "purge", "--older-than", "30d", "--state", "bogus")
    assert refused.returncode != 0 and "unknown state(s): bogus" in refused.stderr
    assert manage("events", "purge", "--older-than", "soon").returncode != 0


def test_the_listener_purges_expired_done_events_in_the_background(
    start_listener: Callable[..., Listener],
) -> None:
    """Retention drops whole history partitions: the day of an event two days old is
    dropped with a day's retention; today's stays, and dead events are not history."""
    two_days_ago = timezone.now() - timedelta(days=2)
    expired = put("done", finished_at=two_days_ago)
    kept = put("done", finished_at=timezone.now())
    dead = put("dead", finished_at=two_days_ago)
    upkeep.prepare_history(86400, since=two_days_ago)  # that day's partition, made then
    listener = start_listener(
        workers=1,
        env_extra={"EVENTBUS_DONE_RETENTION": "86400", "EVENTBUS_PURGE_INTERVAL": "0.2"},
    )
    wait_until(
        lambda: not EventRecord.objects.filter(pk=expired.pk).exists(),
        15,
        what="the expired done event to be purged",
    )
    assert EventRecord.objects.filter(pk__in=[kept.pk, dead.pk]).count() == 2
    wait_until(
        lambda: (
            "dropped 1 done event(s) older than 86400 s with their partitions" in listener.log()
        ),
        5,
    )
