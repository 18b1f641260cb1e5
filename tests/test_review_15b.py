"""Review of issue 15, part 2, second round: what is still wrong after the mends.

Each spec names the bug in its docstring and asserts what a user relies on; each fails
on the code as reviewed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from psycopg import sql as psql

from eventbus.storing.conversion import Conversion
from tests.support import database_url, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = ("eventbus", "0013_attempt_durations")
AFTER = ("eventbus", "0014_partitioned_storage")
CHANNEL = "test_review_15b"
ROLE = f"eventbus_review_b_{os.getpid()}"


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


@pytest.fixture
def role() -> Iterator[str]:
    with connection.cursor() as cursor:
        cursor.execute(psql.SQL("CREATE ROLE {}").format(psql.Identifier(ROLE)))
    yield ROLE
    with connection.cursor() as cursor:
        cursor.execute(psql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(psql.Identifier(ROLE)))


def stored(event_id: int) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT state FROM eventbus_event WHERE id = %s ORDER BY state", [event_id])
        return [r[0] for r in cursor.fetchall()]


INSERT = (
    "INSERT INTO eventbus_event (channel, operation, table_name, new, state, attempts, "
    "errors) VALUES (%s, 'PUBLISH', '', '{}', 'pending', 0, '[]'::jsonb) RETURNING id"
)


# --- The online migration ------------------------------------------------------------------


@pytest.mark.slow
def test_migration_keeps_an_event_committed_out_of_id_order_and_finished_during_the_copy(
    single_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUG: the swap re-copies `watched` (ids runnable in the snapshot that took `upto`)
    and ids above `newest` (the highest id that snapshot saw). An event whose writer had
    not committed yet when that snapshot was taken, but whose id is below `newest` (a
    later writer committed first: ids follow nextval, not commit order), is in neither.
    Once committed, a listener marks it done (finished_at = clock_timestamp(), before
    the catch-up pass reads `later`) and its claim transaction commits after the
    catch-up pass read its batch: the catch-up saw it pending, the next window starts at
    `later`, and the swap skips it (not watched, id <= newest, finished before upto).
    The handled event is lost: the first review's bug, still there for this event.
    (Mended by dropping the catch-up passes: the swap copies again everything finished
    since the copy began.)"""
    slow_writer = psycopg.connect(database_url())
    (event_id,) = slow_writer.execute(INSERT, [CHANNEL]).fetchone()  # not committed yet
    with psycopg.connect(database_url(), autocommit=True) as fast_writer:
        fast_writer.execute(INSERT, [CHANNEL])  # a higher id, committed first
    listener = psycopg.connect(database_url())
    original = Conversion._copy_history
    calls: list[int] = []

    def copy(self: Conversion, since: Any, upto: Any, **options: Any) -> int:
        copied = original(self, since, upto, **options)
        calls.append(copied)
        if len(calls) == 1:  # after the copy of history, before anything else
            slow_writer.commit()
            listener.execute(
                "UPDATE eventbus_event SET state = 'done', attempts = attempts + 1, "
                "finished_at = clock_timestamp() WHERE id = %s",
                [event_id],
            )
            committer.start()  # the mark commits once the final step waits for it
        return copied

    def commit_when_the_swap_waits() -> None:
        with psycopg.connect(database_url(), autocommit=True) as probe:
            wait_until(
                lambda: probe.execute(
                    "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted "
                    "AND relation = 'eventbus_event'::regclass)"
                ).fetchone()[0],
                30,
                what="the migration's final step to wait for the listener's lock",
            )
        listener.commit()

    committer = threading.Thread(target=commit_when_the_swap_waits)

    monkeypatch.setattr(Conversion, "_copy_history", copy)
    try:
        migrate(AFTER)
    finally:
        committer.join(30)
        slow_writer.close()
        listener.close()
    assert stored(event_id) == ["done"], "the event handled during the migration is gone"


# --- Privileges ----------------------------------------------------------------------------


@pytest.mark.slow
def test_migration_keeps_column_privileges_on_the_event_table(
    single_table: None, role: str
) -> None:
    """BUG: the swap copies the old table's privileges from pg_class.relacl only; column
    privileges live in pg_attribute.attacl. A least-privilege reporting or monitoring role
    granted SELECT on some columns of eventbus_event (a dashboard that must not read the
    payloads) gets "permission denied" after the migration."""
    with connection.cursor() as cursor:
        cursor.execute(
            psql.SQL("GRANT SELECT (id, channel, state) ON eventbus_event TO {}").format(
                psql.Identifier(role)
            )
        )
    migrate(AFTER)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT has_column_privilege(%s, 'eventbus_event', 'state', 'SELECT')", [role]
        )
        assert cursor.fetchone()[0], "the role lost its column grants on eventbus_event"


@pytest.mark.slow
def test_migrating_back_to_the_single_table_keeps_the_grants(role: str) -> None:
    """BUG: `migrate eventbus 0013` (Conversion.to_plain) builds a new table with LIKE,
    drops the partitioned one and renames: no privilege is copied (the forward move was
    mended to copy them, the way back was not). Every listener or writer role granted
    rights on eventbus_event gets "permission denied" after a rollback of the release."""
    with connection.cursor() as cursor:
        cursor.execute(
            psql.SQL("GRANT SELECT, INSERT ON eventbus_event TO {}").format(psql.Identifier(role))
        )
    migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT has_table_privilege(%s, 'eventbus_event', 'SELECT'), "
                "has_table_privilege(%s, 'eventbus_event', 'INSERT')",
                [role, role],
            )
            assert cursor.fetchone() == (True, True), "the rollback dropped the table's grants"
    finally:
        migrate(AFTER)


@pytest.mark.slow
def test_migration_keeps_the_grant_option_on_the_event_table(single_table: None, role: str) -> None:
    """BUG: the swap re-grants each aclexplode row without its is_grantable flag: a role
    that held a privilege WITH GRANT OPTION (one that hands read access on to per-team
    roles, say) keeps the privilege but can no longer grant it."""
    with connection.cursor() as cursor:
        cursor.execute(
            psql.SQL("GRANT SELECT ON eventbus_event TO {} WITH GRANT OPTION").format(
                psql.Identifier(role)
            )
        )
    migrate(AFTER)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT has_table_privilege(%s, 'eventbus_event', 'SELECT WITH GRANT OPTION')",
            [role],
        )
        assert cursor.fetchone()[0], "the role lost its grant option on eventbus_event"
