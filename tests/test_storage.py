"""Storage that stays small at any age: a rotating queue, history dropped by partition.

Pending and failed events live in a small queue whose two slots take turns; done
events in history partitions by finish time; dead ones apart. These specs hold the
engine to that, and to what an operator relies on: nothing is lost when a slot is
emptied, a held snapshot cannot make the queue grow for good, and retention deletes no
rows.
"""

from __future__ import annotations

from datetime import UTC, timedelta

import psycopg
import pytest
from django.core.checks import run_checks
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from eventbus import Channel, Event, RetryLater
from eventbus.models import EventRecord, WorkerRecord
from eventbus.operating import maintenance
from eventbus.running.executor import Executor
from eventbus.sql import Scope
from eventbus.storing import layout, upkeep
from tests.support import database_url, manage

pytestmark = pytest.mark.django_db(transaction=True)

stored = Channel("test_stored")
later = Channel("test_stored_later")


@stored.on
def _stored(event: Event) -> None:
    if (event.new or {}).get("die"):
        raise ValueError("no")


@later.on
def _later(event: Event) -> None:
    raise RetryLater("not yet", delay=3600)


def run(channel: Channel, limit: int = 1000) -> list:
    return Executor("storage-test").run_batch(Scope(channels=(channel.name,)), limit)


def where(ids: list[int]) -> dict[int, str]:
    """The partition each event's row is in."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, tableoid::regclass::text FROM eventbus_event WHERE id = ANY(%s)", [ids]
        )
        return dict(cursor.fetchall())


def scalar(query: str, params: list | None = None):
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()[0]


def current_slot() -> str:
    return layout.SLOTS[scalar("SELECT pg_sequence_last_value('eventbus_queue_slot')")]


def other_slot() -> str:
    return next(s for s in layout.SLOTS if s != current_slot())


def test_each_state_lives_in_its_own_partition() -> None:
    waiting = stored.publish({})
    done = stored.publish({})
    dead = stored.publish({"die": True})
    run(stored)
    EventRecord.objects.filter(pk=dead).update(state="dead")  # no retries left, as an operator
    assert scalar("SELECT relkind FROM pg_class WHERE relname = 'eventbus_event'") == "p"
    waiting = stored.publish({})
    places = where([waiting, done, dead])
    assert places[waiting] == current_slot()
    assert places[done].startswith("eventbus_event_done_2"), places  # today's partition
    assert places[dead] == layout.DEAD_LETTERS


def test_the_marks_list_every_column_of_an_event() -> None:
    fields = {f.column for f in EventRecord._meta.concrete_fields}
    assert set(layout.COLUMNS) == fields
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'eventbus_event'::regclass "
            "AND attnum > 0 AND NOT attisdropped"
        )
        assert {r[0] for r in cursor.fetchall()} == fields | {"slot"}


NEVER = 1 << 40  # dead rows never reached: the call only empties the drained slot


def test_rotation_empties_the_drained_slot_and_keeps_its_waiting_events() -> None:
    first = current_slot()
    waiting = later.publish({"n": 1})  # fails, and waits an hour for its retry
    handled = [stored.publish({"n": n}) for n in range(50)]
    run(later)
    run(stored)
    before = EventRecord.objects.get(pk=waiting)
    assert before.state == "failed" and where([waiting])[waiting] == first

    # The slot is full (any size is, here): new events go to the other one.
    assert upkeep.rotate_queue(0).endswith("switched")
    assert current_slot() != first
    newer = stored.publish({})
    assert where([newer])[newer] == current_slot()
    # The drained slot is emptied; the event waiting for its retry moves, unchanged.
    assert upkeep.rotate_queue(NEVER) == "emptied 1"
    assert scalar(f"SELECT pg_relation_size('{first}')") == 0
    after = EventRecord.objects.get(pk=waiting)
    assert where([waiting])[waiting] == current_slot()
    assert (after.state, after.attempts, after.run_after, after.last_error) == (
        before.state,
        before.attempts,
        before.run_after,
        before.last_error,
    )
    assert EventRecord.objects.filter(pk__in=handled, state="done").count() == 50
    assert upkeep.rotate_queue(NEVER) == "small"  # nothing to do until the slot fills
    run(stored)
    assert EventRecord.objects.get(pk=newer).state == "done"


def test_rotation_waits_while_the_drained_slot_holds_a_backlog(monkeypatch) -> None:
    backlog = [stored.publish({}) for _ in range(5)]
    upkeep.rotate_queue(0)  # the backlog's slot is drained from now on
    assert set(where(backlog).values()) == {other_slot()}
    monkeypatch.setattr(upkeep, "MAX_MOVED", 3)
    assert upkeep.rotate_queue(0) == "backlog"  # and no switch: the other is not empty
    run(stored)
    assert upkeep.rotate_queue(NEVER) == "emptied 0"


def test_rotation_gives_way_to_a_claim_that_holds_the_slot() -> None:
    held = stored.publish({})
    upkeep.rotate_queue(0)  # the event's slot is drained from now on
    with psycopg.connect(database_url()) as worker:
        worker.execute("SELECT id FROM eventbus_event WHERE id = %s FOR UPDATE", [held])
        assert upkeep.rotate_queue(0) == "locked"  # after ROTATION_LOCK_WAIT_MS, not forever
    assert upkeep.rotate_queue(NEVER) == "emptied 1"
    assert EventRecord.objects.get(pk=held).state == "pending"


def test_a_held_snapshot_cannot_keep_the_queue_large() -> None:
    """VACUUM may not remove what an open snapshot might still see; TRUNCATE may."""
    first = current_slot()
    with psycopg.connect(database_url(), autocommit=True) as analytics:
        analytics.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        analytics.execute("SELECT count(*) FROM auth_user")  # the snapshot, on other tables
        for _ in range(3):
            with transaction.atomic():
                for n in range(500):
                    stored.publish({"n": n})
            run(stored, 2000)
        grown = scalar(f"SELECT pg_relation_size('{first}')")
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM {first}")
        assert scalar(f"SELECT pg_relation_size('{first}')") == grown  # VACUUM: nothing
        assert scalar(f"SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = '{first}'")
        assert upkeep.rotate_queue(0).endswith("switched")
        assert upkeep.rotate_queue(NEVER) == "emptied 0"
        assert scalar(f"SELECT pg_relation_size('{first}')") == 0
        indexes = scalar(f"SELECT count(*) FROM pg_index WHERE indrelid = '{first}'::regclass")
        assert scalar(f"SELECT pg_indexes_size('{first}')") == 8192 * indexes  # metapages
        analytics.execute("ROLLBACK")


def _finish_later(ids: list[int], days: int) -> None:
    """As if these done events had finished `days` later (a move between partitions)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE eventbus_event SET finished_at = finished_at + make_interval(days => %s) "
            "WHERE id = ANY(%s)",
            [days, ids],
        )


def done_partitions() -> list[str]:
    return scalar(
        "SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}') "
        "FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'eventbus_event_done'::regclass"
    )


@pytest.fixture
def day_partitions() -> None:
    """History as a fresh installation has it: day partitions from today, two ahead
    (other specs make partitions of other spans and days; a flush keeps them)."""
    with connection.cursor() as cursor:
        for name in done_partitions():
            if name != layout.DONE_DEFAULT:
                cursor.execute(f'DROP TABLE "{name}"')
    upkeep.prepare_history(86400)


def test_retention_drops_whole_partitions_and_deletes_no_row(day_partitions: None) -> None:
    today = [stored.publish({}) for _ in range(3)]
    kept = [stored.publish({}) for _ in range(4)]
    run(stored)
    _finish_later(kept, 2)  # in the partition of the day after tomorrow
    partitions = done_partitions()
    assert len({where([i])[i] for i in today}) == 1
    [today_partition] = {where([i])[i] for i in today}

    # Five days on, with three days' retention: today's and tomorrow's partitions go.
    five_days_on = timezone.now() + timedelta(days=5)
    assert maintenance.purge_expired(3 * 86400, now=timezone.now() + timedelta(days=3)) == 0
    assert maintenance.purge_expired(3 * 86400, now=five_days_on) == 3
    assert not EventRecord.objects.filter(pk__in=today).exists()
    assert EventRecord.objects.filter(pk__in=kept).count() == 4
    left = done_partitions()
    assert today_partition not in left and set(left) < set(partitions), left
    assert scalar(f"SELECT to_regclass('{today_partition}')") is None  # dropped, not emptied


def test_done_events_without_a_partition_wait_in_the_default_one_until_it_is_made(
    day_partitions: None,
) -> None:
    ids = [stored.publish({}) for _ in range(2)]
    run(stored)
    _finish_later(ids, 10)  # no partition that far ahead
    assert set(where(ids).values()) == {layout.DONE_DEFAULT}
    with connection.cursor() as cursor:
        cursor.execute("SELECT eventbus_prepare_history(86400, 12, 500)")
    [partition] = set(where(ids).values())
    assert partition.startswith("eventbus_event_done_2"), partition
    assert EventRecord.objects.filter(pk__in=ids, state="done").count() == 2


def test_history_partitions_are_made_ahead_of_time(day_partitions: None) -> None:
    assert upkeep.prepare_history(86400) == 0  # made once
    day = timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    names = done_partitions()
    for ahead in range(upkeep.HISTORY_AHEAD + 1):
        stamp = (day + timedelta(days=ahead)).strftime("%Y%m%dt%H%M%S")
        assert f"eventbus_event_done_{stamp}" in names, names
    # A span that overlaps the partitions there (the setting changed) is skipped.
    assert upkeep.prepare_history(3600) == 0


def test_health_names_a_session_that_keeps_the_queue_from_rotating() -> None:
    """A session that read the event table in a transaction it keeps open holds a lock
    that TRUNCATE waits for: rotation gives way, and health says who."""
    WorkerRecord.objects.create(name="probe:1", host="probe", pid=1, channels="*")
    held = stored.publish({})
    upkeep.rotate_queue(0)  # the event's slot is drained from now on
    with psycopg.connect(database_url(), application_name="report", autocommit=True) as report:
        report.execute("BEGIN")
        report.execute("SELECT count(*) FROM eventbus_event")
        assert upkeep.rotate_queue(NEVER) == "locked"
        checked = manage("eventbus_health", "--skip-backlog", "--max-queue-lock-age", "0")
        assert checked.returncode == 0, checked.stderr
        pid = report.info.backend_pid
        assert (
            f"warning: session {pid} (report, idle in transaction) has held a lock on the "
            "event queue for"
        ) in checked.stdout, checked.stdout
        report.execute("ROLLBACK")
    assert upkeep.rotate_queue(NEVER) == "emptied 1"
    assert EventRecord.objects.get(pk=held).state == "pending"
    quiet = manage("eventbus_health", "--skip-backlog", "--max-queue-lock-age", "0")
    assert "event queue" not in quiet.stdout


def test_a_listener_backs_off_while_claims_keep_the_drained_slot_locked() -> None:
    """Each try holds up new claims for up to ROTATION_LOCK_WAIT_MS: not every second."""
    held = stored.publish({})
    upkeep.rotate_queue(0)  # the event's slot is drained from now on
    rotation = upkeep.Rotation(NEVER, "default", "storage-test")
    with psycopg.connect(database_url()) as worker:
        worker.execute("SELECT id FROM eventbus_event WHERE id = %s FOR UPDATE", [held])
        assert rotation.run() == "locked" and rotation.interval == 2 * upkeep.CHECK_INTERVAL
        assert rotation.run() == "locked" and rotation.interval == 4 * upkeep.CHECK_INTERVAL
        assert not rotation.due()
    assert rotation.run() == "emptied 1" and rotation.interval == upkeep.CHECK_INTERVAL


def test_an_operator_planted_in_the_schema_does_not_run_inside_the_upkeep() -> None:
    """The upkeep runs as the tables' owner: a role that may create objects in the
    application's schema must not get its own `text || integer` called there."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION planted(text, integer) RETURNS text LANGUAGE sql "
            "AS $$ SELECT 'planted' $$"
        )
        cursor.execute(
            "CREATE OPERATOR || (LEFTARG = text, RIGHTARG = integer, FUNCTION = planted)"
        )
    try:
        stored.publish({})
        assert upkeep.rotate_queue(0).endswith("switched")
        assert upkeep.rotate_queue(NEVER) == "emptied 1"
        assert upkeep.prepare_history(86400) >= 0
        assert upkeep.expire_history(timezone.now() - timedelta(days=30)) == 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP OPERATOR IF EXISTS || (text, integer)")
            cursor.execute("DROP FUNCTION IF EXISTS planted(text, integer)")


@pytest.mark.parametrize(
    ("setting", "value", "check"),
    [("HISTORY_PARTITION", 60, "eventbus.E050"), ("QUEUE_SLOT_EVENTS", 10, "eventbus.E051")],
)
def test_storage_settings_that_would_thrash_fail_the_checks(
    setting: str, value: int, check: str
) -> None:
    with override_settings(EVENTBUS={setting: value}):
        found = [m.id for m in run_checks(tags=["eventbus"])]
    assert check in found
    assert check not in [m.id for m in run_checks(tags=["eventbus"])]
