"""Review of issue 15, part 2 (partitioned event storage): what the change gets wrong.

Each spec names the bug in its docstring and asserts what a user relies on; each fails
on the code as reviewed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from psycopg import sql as psql

from eventbus import Channel, Event
from eventbus import sql as eventbus_sql
from eventbus.models import EventRecord
from eventbus.operating import roles
from eventbus.running.executor import Executor
from eventbus.sql import Scope
from eventbus.storing import layout, upkeep
from eventbus.storing.conversion import Conversion
from tests.support import database_url

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = ("eventbus", "0013_attempt_durations")
AFTER = ("eventbus", "0014_partitioned_storage")
CHANNEL = "test_review_15"

reviewed = Channel(CHANNEL)


@reviewed.on
def _reviewed(event: Event) -> None:
    pass


def migrate(target: tuple[str, str]) -> None:
    MigrationExecutor(connection).migrate([target])
    connection.close()  # a fresh connection: no plan cached against the old table


@pytest.fixture
def single_table() -> Iterator[None]:
    """The event table as eventbus 0013 left it; migrated forward again afterwards."""
    migrate(BEFORE)
    try:
        yield
    finally:
        migrate(AFTER)


def old_event(state: str, finished_hours_ago: float | None = None) -> int:
    """An event as 0013's engine stored it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, new, state, attempts, "
            "last_error, errors, finished_at) VALUES (%s, 'PUBLISH', '', '{}', %s, "
            "CASE WHEN %s = 'pending' THEN 0 ELSE 1 END, NULL, '[]'::jsonb, "
            "now() - make_interval(secs => %s)) RETURNING id",
            [
                CHANNEL,
                state,
                state,
                None if finished_hours_ago is None else finished_hours_ago * 3600,
            ],
        )
        return int(cursor.fetchone()[0])


def stored(event_id: int) -> list[tuple[str, str]]:
    """Every row the event table holds for this id: (state, partition)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT state, tableoid::regclass::text FROM eventbus_event WHERE id = %s "
            "ORDER BY state",
            [event_id],
        )
        return [tuple(r) for r in cursor.fetchall()]


def after_first_copy(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> list[int]:
    """Run `action` once the migration's first pass over history has been copied (as a
    listener or an operator would, while history is copied in short transactions)."""
    original = Conversion._copy_history
    calls: list[int] = []

    def copy(self: Conversion, since: Any, upto: Any, **options: Any) -> int:
        copied = original(self, since, upto, **options)
        calls.append(copied)
        if len(calls) == 1:
            action()
        return copied

    monkeypatch.setattr(Conversion, "_copy_history", copy)
    return calls


# --- The online migration (eventbus.storing.conversion) ------------------------------------


@pytest.mark.slow
def test_migration_keeps_an_event_finished_by_a_transaction_open_when_the_copy_began(
    single_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUG: an event marked done (finished_at = clock_timestamp()) by a claim transaction
    that commits after the history copy read its batch is lost. The first pass copies
    history finished before `upto` but sees the row still pending; the catch-up passes
    copy only what finished at or after `upto`, and the final swap only pending/failed
    rows and history finished at or after the last `upto`. The row falls between."""
    event_id = old_event("pending")
    # A listener (of either release) marks the event done; its claim transaction is
    # still open when `migrate` takes `upto` and copies the first batch.
    with psycopg.connect(database_url()) as listener:
        listener.execute(
            "UPDATE eventbus_event SET state = 'done', attempts = attempts + 1, "
            "finished_at = clock_timestamp() WHERE id = %s",
            [event_id],
        )
        after_first_copy(monkeypatch, listener.commit)
        migrate(AFTER)
    assert [state for state, _ in stored(event_id)] == ["done"], "the handled event is gone"


@pytest.mark.slow
def test_migration_does_not_duplicate_an_event_retried_and_finished_during_the_copy(
    single_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUG: a dead event copied by the first pass, then retried by an operator and
    handled before the final step, was copied again (it finished after `upto`): the new
    table held the id twice, dead and done (the partitioned
    table has no unique id). `events retry` on the dead ghost runs it a second time, and
    `migrate eventbus 0013` cannot add its primary key back."""
    event_id = old_event("dead", finished_hours_ago=2)

    def retried_and_handled() -> None:
        with psycopg.connect(database_url(), autocommit=True) as operator:
            # events retry, then a listener's mark (0013's engine, on the old table)
            operator.execute(
                "UPDATE eventbus_event SET state = 'pending', run_after = now(), "
                "finished_at = NULL WHERE id = %s",
                [event_id],
            )
            operator.execute(
                "UPDATE eventbus_event SET state = 'done', attempts = attempts + 1, "
                "finished_at = clock_timestamp() WHERE id = %s",
                [event_id],
            )

    after_first_copy(monkeypatch, retried_and_handled)
    migrate(AFTER)
    assert [state for state, _ in stored(event_id)] == ["done"]


@pytest.mark.slow
def test_migration_does_not_bring_back_dead_events_purged_during_the_copy(
    single_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUG: rows deleted from the old table after the first pass copied them stay in the
    new table. The conversion's docstring accepts this because "retention drops them
    with their partition", but dead letters have no retention: a dead event an operator
    purged (`events purge --state dead`) during the migration is back for good, and
    `recover --dead` or `events retry --state dead` would run it again."""
    purged = old_event("dead", finished_hours_ago=5)
    kept = old_event("dead", finished_hours_ago=5)

    def purge() -> None:
        with psycopg.connect(database_url(), autocommit=True) as operator:
            operator.execute("DELETE FROM eventbus_event WHERE id = %s", [purged])

    after_first_copy(monkeypatch, purge)
    migrate(AFTER)
    assert stored(kept) == [("dead", layout.DEAD_LETTERS)]
    assert stored(purged) == [], "a purged dead event came back"


@pytest.mark.slow
def test_a_collection_id_taken_during_the_swap_is_not_given_to_an_event(
    single_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUG: collection ids come from the event id sequence (sql.open_collection, which
    needs no lock on the event table). The swap reads the old sequence's last value,
    sets the new sequence from it, and only then renames and drops: a collection opened
    in between takes an id from the old sequence that the new one hands out again, so a
    later event's id equals that collection's id (its tree and status then mix the
    two)."""
    old_event("pending")
    taken: list[int] = []
    original = Conversion._execute

    def execute(self: Conversion, query: Any, params: Any = None) -> list[Any]:
        result = original(self, query, params)
        if isinstance(query, str) and query.startswith("SELECT setval(pg_get_serial_sequence"):
            # lock_timeout: were the sequence out of reach, the writer would fail, not hang
            with psycopg.connect(
                database_url(), autocommit=True, options="-c lock_timeout=5000"
            ) as writer:
                query_, args = eventbus_sql.open_collection(None)
                [(collection, _)] = writer.execute(query_, args).fetchall()
                taken.append(int(collection))
        return result

    monkeypatch.setattr(Conversion, "_execute", execute)
    migrate(AFTER)
    assert taken, "the swap set the new sequence"
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, new) "
            "VALUES (%s, 'PUBLISH', '', '{}') RETURNING id",
            [CHANNEL],
        )
        (event_id,) = cursor.fetchone()
    assert event_id != taken[0], "an event got the id of a collection opened during the swap"


# --- Privileges ----------------------------------------------------------------------------

ROLE = f"eventbus_review_{os.getpid()}"


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.fixture
def old_release_role() -> Iterator[str]:
    """A listener role as the previous release's `eventbus_role` made it (no upkeep
    functions existed then); its URL."""
    text = roles.listener_role(ROLE)
    lines = [
        line
        for line in text.splitlines()
        if "FUNCTION" not in line and "keep the storage small" not in line
    ]
    with connection.cursor() as cursor:
        cursor.execute("\n".join(lines))
    yield as_role(database_url(), ROLE)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [ROLE]
        )
        cursor.execute(psql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(psql.Identifier(ROLE)))


@pytest.mark.slow
def test_migration_keeps_the_grants_on_the_event_table(
    single_table: None, old_release_role: str
) -> None:
    """BUG: the swap drops the old table and renames a new one created with LIKE, which
    copies no privileges. A least-privilege listener role (and any writer role granted
    INSERT) loses every right on eventbus_event: listeners of the previous release,
    which the README says keep working during an upgrade, get "permission denied", and
    so does every trigger-driven write made under such a role."""
    with psycopg.connect(old_release_role) as conn:
        conn.execute("SELECT count(*) FROM eventbus_event").fetchone()  # works before
    migrate(AFTER)
    with psycopg.connect(old_release_role) as conn:
        conn.execute("SELECT count(*) FROM eventbus_event").fetchone()
        conn.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, new) "
            "VALUES (%s, 'PUBLISH', '', '{}')",
            [CHANNEL],
        )


# --- History partitions ----------------------------------------------------------------------

UPPER_BOUNDS = r"""
SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = 'eventbus_event_done'::regclass
"""


def upper_bounds() -> list[datetime]:
    with connection.cursor() as cursor:
        cursor.execute(UPPER_BOUNDS)
        return [r[0] for r in cursor.fetchall() if r[0] is not None]


def test_done_events_get_a_partition_after_history_partition_grows() -> None:
    """BUG: after HISTORY_PARTITION grows (a day to a week, say), the new span that
    overlaps the existing day partitions is skipped whole, so nothing ever covers the
    time from the end of the last day partition to the next new span. Done events
    finished then go to the default partition for good (prepare_history never makes
    their partition), and retention removes them by DELETE, row by row: what issue 15
    rules out."""
    upkeep.prepare_history(86400)
    end = max(upper_bounds())  # the last day partition ends here
    span = next(d * 86400 for d in (7, 11, 13) if end.timestamp() % (d * 86400))
    upkeep.prepare_history(span)  # the setting changed; listeners call this every minute
    upkeep.prepare_history(span)
    finished = end + timedelta(hours=1)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, new, state, "
            "finished_at) VALUES (%s, 'PUBLISH', '', '{}', 'done', %s) "
            "RETURNING tableoid::regclass::text",
            [CHANNEL, finished],
        )
        (partition,) = cursor.fetchone()
    assert partition != layout.DONE_DEFAULT, (
        f"an event finished at {finished} has no history partition (span {span} s); "
        f"partitions end at {sorted(upper_bounds())}"
    )


# --- Marks on a partitioned table without a key -------------------------------------------


def test_marks_work_in_a_database_that_publishes_all_tables() -> None:
    """BUG: the partitioned event table has no primary key (only a plain index on id),
    so its partitions have no replica identity. In a database with a FOR ALL TABLES
    publication (logical replication, CDC such as Debezium, a blue-green upgrade), every
    DELETE and UPDATE on them fails: the marks (DELETE + INSERT), discard, requeue and
    the rotation's move. Listeners handle nothing. The single table had its primary key,
    and worked."""
    event_id = reviewed.publish({})
    with connection.cursor() as cursor:
        cursor.execute("CREATE PUBLICATION eventbus_review_all FOR ALL TABLES")
    try:
        Executor("review-15").run_batch(Scope(channels=(CHANNEL,)), 10)
    except Exception as exc:
        pytest.fail(f"the mark failed: {exc}")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP PUBLICATION IF EXISTS eventbus_review_all")
    assert EventRecord.objects.get(pk=event_id).state == "done"
