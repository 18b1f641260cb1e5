"""`migrate` moves an installation's single event table into the partitioned layout:
every event kept as it was (pending, failed, dead and done), with listeners and writers
held up only for the final swap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from eventbus import Channel, Event
from eventbus.models import EventRecord
from eventbus.running.executor import Executor
from eventbus.sql import Scope
from eventbus.storing import layout
from tests.support import database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BEFORE = ("eventbus", "0013_attempt_durations")
AFTER = ("eventbus", "0014_partitioned_storage")

moved = Channel("test_moved")
seen: list[int] = []


@moved.on
def _moved(event: Event) -> None:
    seen.append(event.id)


def migrate(target: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([target])
    connection.close()  # a fresh connection: no plan cached against the old table


@pytest.fixture
def single_table() -> Iterator[None]:
    """The event table as eventbus 0013 left it; migrated forward again afterwards."""
    migrate(BEFORE)
    try:
        yield
    finally:
        migrate(AFTER)


def rows() -> dict[int, tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, channel, state, attempts, key, new::text, last_error, errors::text, "
            "run_after, finished_at, correlation_id FROM eventbus_event"
        )
        return {r[0]: r[1:] for r in cursor.fetchall()}


def old_layout_events() -> dict[str, list[int]]:
    """Events in every state, written as 0013's engine wrote them."""
    ids: dict[str, list[int]] = {}
    with connection.cursor() as cursor:
        for state, count in (("pending", 5), ("failed", 3), ("dead", 2), ("done", 40)):
            cursor.execute(
                "INSERT INTO eventbus_event (channel, operation, table_name, key, new, state, "
                "attempts, last_error, errors, run_after, finished_at) "
                "SELECT %s, 'PUBLISH', '', g::text, json_build_object('n', g), %s, "
                "CASE WHEN %s = 'pending' THEN 0 ELSE 2 END, "
                "CASE WHEN %s IN ('failed', 'dead') THEN 'boom' END, '[]'::jsonb, "
                "now() + CASE WHEN %s = 'failed' THEN interval '1 hour' ELSE interval '0' END, "
                "CASE WHEN %s IN ('done', 'dead') THEN now() - make_interval(hours => g) END "
                "FROM generate_series(1, %s) AS g RETURNING id",
                [moved.name, state, state, state, state, state, count],
            )
            ids[state] = [r[0] for r in cursor.fetchall()]
    return ids


def partitioned() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'eventbus_event'")
        return cursor.fetchone()[0] == "p"


def test_migrate_keeps_every_event_of_every_state(single_table: None) -> None:
    assert not partitioned()
    ids = old_layout_events()
    before = rows()
    migrate(AFTER)
    assert partitioned()
    assert rows() == before
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT state, array_agg(DISTINCT split_part(tableoid::regclass::text, '_2', 1)) "
            "FROM eventbus_event GROUP BY state"
        )
        places = dict(cursor.fetchall())
    assert places["done"] == ["eventbus_event_done"]
    assert places["dead"] == [layout.DEAD_LETTERS]
    assert set(places["pending"]) | set(places["failed"]) <= set(layout.SLOTS)

    # New events follow the old ones, and listeners take up the pending ones.
    newer = moved.publish({})
    assert newer > max(before)
    seen.clear()
    Executor("after-migrate").run_batch(Scope(channels=(moved.name,)), 100)
    assert sorted(seen) == sorted(ids["pending"] + [newer])
    assert EventRecord.objects.filter(pk__in=ids["pending"], state="done").count() == 5


def test_migrating_back_restores_the_single_table(single_table: None) -> None:
    migrate(AFTER)
    for _ in range(3):
        moved.publish({})
    before = rows()
    migrate(BEFORE)
    assert not partitioned() and rows() == before
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'eventbus_event'")
        assert {r[0] for r in cursor.fetchall()} >= {
            "eventbus_event_pkey",
            "eventbus_event_runnable",
            "eventbus_event_finished",
        }


def test_writers_go_on_during_the_move_and_lose_nothing(single_table: None) -> None:
    """A writer commits events the whole time; each one is in the new table."""
    old_layout_events()
    written: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(database_url(), autocommit=True) as conn:
            while not stop.is_set():
                [(event_id,)] = conn.execute(
                    "INSERT INTO eventbus_event (channel, operation, table_name, new) "
                    "VALUES (%s, 'PUBLISH', '', '{}') RETURNING id",
                    [moved.name],
                ).fetchall()
                written.append(event_id)
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 20:
            time.sleep(0.01)
        migrate(AFTER)
        count = len(written)
        deadline = time.monotonic() + 10
        while len(written) < count + 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert len(written) >= count + 20, "the writer went on after the move"
    stored = set(EventRecord.objects.filter(pk__in=written).values_list("pk", flat=True))
    assert stored == set(written)


def test_listeners_of_the_previous_release_keep_working_on_the_new_table() -> None:
    """0013's engine marks with an UPDATE; PostgreSQL moves the row to its partition."""
    pending = moved.publish({})
    failed = moved.publish({})
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE eventbus_event SET state = 'done', attempts = attempts + 1, "
            "finished_at = clock_timestamp() WHERE id = %s",
            [pending],
        )
        cursor.execute(
            "UPDATE eventbus_event SET state = 'dead', finished_at = clock_timestamp() "
            "WHERE id = %s",
            [failed],
        )
        cursor.execute(
            "SELECT id, tableoid::regclass::text FROM eventbus_event WHERE id = ANY(%s)",
            [[pending, failed]],
        )
        places = dict(cursor.fetchall())
    assert places[pending].startswith("eventbus_event_done_2")
    assert places[failed] == layout.DEAD_LETTERS
