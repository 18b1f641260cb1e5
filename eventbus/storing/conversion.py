"""The online move of an installation's single event table into the partitioned layout.

Listeners and writers keep running while history is copied; they wait only for the
final step, which takes the old table's ACCESS EXCLUSIVE lock, copies what changed
since (the pending and failed events, everything that finished since the copy began,
and every event that was runnable then or written since), swaps the names and drops the
old table. Code of the previous release keeps working on the new
table (its marks are UPDATEs that PostgreSQL turns into moves between partitions), so
listeners may be upgraded before or after.

Done events deleted from the old table while history was being copied (an operator's
purge) are copied all the same; retention drops them with their partition. Dead events
purged meanwhile stay purged. Ids go on with a gap of a million (``ID_GAP``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from psycopg import sql

from eventbus.event import DEAD, DONE, FAILED, PENDING
from eventbus.storing import layout

log = logging.getLogger("eventbus.storage")

NEXT = "eventbus_event_next"
OLD = "eventbus_event_old"
PLAIN = "eventbus_event_plain"
HISTORY_SPAN = 86400  # the migration's partitions; listeners use HISTORY_PARTITION
BATCH = 20_000
WINDOW_LOCK_WAIT = "10s"

_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, layout.COLUMNS))


def _copy(where: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {next} ({cols}) SELECT {cols} FROM {table} AS e WHERE {where}"
    ).format(
        next=sql.Identifier(NEXT),
        cols=_COLUMNS,
        table=sql.Identifier(layout.TABLE),
        where=sql.SQL(where),
    )


def _replace(where: str) -> sql.Composed:
    """Copy the events `where` selects, replacing any copy made before."""
    return sql.SQL(
        "WITH src AS MATERIALIZED (SELECT {cols} FROM {table} AS e WHERE {where}), "
        "gone AS (DELETE FROM {next} WHERE id IN (SELECT id FROM src)) "
        "INSERT INTO {next} ({cols}) SELECT {cols} FROM src"
    ).format(
        next=sql.Identifier(NEXT),
        cols=_COLUMNS,
        table=sql.Identifier(layout.TABLE),
        where=sql.SQL(where),
    )


# What the final step copies again: every event that is not history finished before
# `upto`, every event that was runnable when the copy began (`watched`), and every event
# written since (above `newest`). Each part is served by an index of the old table.
_CHANGED = (
    f"e.state IN ('{PENDING}', '{FAILED}')",
    f"e.state IN ('{DONE}', '{DEAD}') AND e.finished_at >= %(upto)s",
    f"e.state IN ('{DONE}', '{DEAD}') AND e.finished_at IS NULL",
    f"e.id = ANY(%(watched)s) AND e.state IN ('{DONE}', '{DEAD}') AND e.finished_at < %(upto)s",
    f"e.id > %(newest)s AND e.state IN ('{DONE}', '{DEAD}') AND e.finished_at < %(upto)s",
)
# The table's privileges, one row per grantee (NULL: PUBLIC) and privilege; not its
# owner's, which the new table has as the same owner.
# The table's privileges, and its columns': one row per grantee (NULL: PUBLIC),
# privilege, column (NULL: the table) and grant option; not its owner's, which the new
# table has as the same owner.
_GRANTS = (
    "SELECT r.rolname, a.privilege_type, NULL::name, a.is_grantable FROM pg_class AS c "
    "CROSS JOIN LATERAL aclexplode(c.relacl) AS a LEFT JOIN pg_roles AS r "
    "ON r.oid = a.grantee WHERE c.oid = to_regclass(%(table)s) AND a.grantee <> c.relowner "
    "UNION ALL SELECT r.rolname, a.privilege_type, t.attname, a.is_grantable "
    "FROM pg_class AS c JOIN pg_attribute AS t ON t.attrelid = c.oid "
    "CROSS JOIN LATERAL aclexplode(t.attacl) AS a LEFT JOIN pg_roles AS r "
    "ON r.oid = a.grantee WHERE c.oid = to_regclass(%(table)s) AND t.attnum > 0 "
    "AND NOT t.attisdropped AND a.grantee <> c.relowner ORDER BY 1, 2, 3"
)
ID_GAP = 1_000_000
_HISTORY = (
    f"e.state IN ('{DONE}', '{DEAD}') AND e.finished_at >= %(since)s "
    "AND e.finished_at < %(upto)s AND e.id > %(after)s AND e.id <= %(until)s"
)


class Conversion:
    """One run of the move, on a Django connection (its own transactions)."""

    def __init__(self, connection: Any, say: Callable[[str], None] | None = None) -> None:
        self.connection = connection
        self.say = say or log.info

    def _execute(self, query: Any, params: Any = None) -> list[Any]:
        with self.connection.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def _atomic(self, statements: list[Any]) -> None:
        from django.db import transaction

        with transaction.atomic(using=self.connection.alias):
            for statement in statements:
                self._execute(statement)

    def state(self) -> tuple[bool, str]:
        [(partitioned, schema)] = self._execute(layout.IS_PARTITIONED, [layout.TABLE])
        return bool(partitioned), str(schema)

    def to_partitioned(self) -> None:
        partitioned, schema = self.state()
        if partitioned:
            self._atomic(layout.functions(schema))
            return
        began = time.monotonic()
        self._execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(NEXT)))
        [(since,)] = self._execute(
            sql.SQL("SELECT coalesce(min(finished_at), now()) FROM {} WHERE state = %s").format(
                sql.Identifier(layout.TABLE)
            ),
            [DONE],
        )
        self._atomic([*layout.create(NEXT, layout.TABLE), *layout.functions(schema)])
        self._prepare_history(since)
        # What the copy may miss: an event that was pending, failed or being handled
        # when it began (a listener's mark may commit a finish time earlier than `upto`
        # after a batch read the row), and any event written since. The swap copies
        # these again, whatever their finish time.
        [(upto, newest, watched)] = self._execute(
            sql.SQL(
                "SELECT now(), coalesce((SELECT max(id) FROM {table}), 0), coalesce(("
                "SELECT array_agg(id) FROM {table} WHERE state IN ({runnable})), '{{}}')"
            ).format(
                table=sql.Identifier(layout.TABLE),
                runnable=sql.SQL(", ").join(map(sql.Literal, (PENDING, FAILED))),
            )
        )
        copied = self._copy_history("-infinity", upto, first=True)
        # No catch-up pass: ids follow nextval, not commit order, so a pass would miss an
        # event committed late and marked done (its finish before the pass's bound) after
        # the pass read it. The swap copies again whatever finished since `upto`.
        window = self._swap(upto, newest, list(watched))
        if copied or window["rows"]:  # a fresh installation has nothing to report
            self.say(
                f"eventbus: event table partitioned: {copied} finished event(s) copied while "
                f"listeners ran, then {window['rows']} in a window of {window['seconds']:.2f} s "
                f"with the table locked ({time.monotonic() - began:.1f} s in all)"
            )

    def _prepare_history(self, since: Any) -> None:
        """History partitions from the oldest done event's span to two spans ahead."""
        self._execute(layout.PREPARE, [HISTORY_SPAN, 2, 60_000, since])

    def _copy_history(self, since: Any, upto: Any, first: bool = False) -> int:
        """Copy history finished in [since, upto), a batch of ids per transaction. After
        the first pass, an event copied before (dead then, retried and done since) has
        its copy replaced, never doubled."""
        [(low, high)] = self._execute(
            sql.SQL("SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM {}").format(
                sql.Identifier(layout.TABLE)
            )
        )
        copied, after = 0, low - 1
        while after < high:
            until = after + BATCH
            with self.connection.cursor() as cursor:
                cursor.execute(
                    _copy(_HISTORY) if first else _replace(_HISTORY),
                    {"since": since, "upto": upto, "after": after, "until": until},
                )
                copied += cursor.rowcount
            after = until
        return copied

    def _swap(self, upto: Any, newest: int, watched: list[int]) -> dict[str, Any]:
        from django.db import transaction

        table, nxt = sql.Identifier(layout.TABLE), sql.Identifier(NEXT)
        with transaction.atomic(using=self.connection.alias):
            started = time.monotonic()
            self._execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(WINDOW_LOCK_WAIT))
            )
            self._execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
            params = {"upto": upto, "newest": newest, "watched": watched}
            rows = 0
            for where in _CHANGED:
                with self.connection.cursor() as cursor:
                    cursor.execute(_replace(where), params)
                    rows += cursor.rowcount
            # Dead events an operator purged meanwhile stay purged (a done one's copy goes
            # with its history partition).
            self._execute(
                sql.SQL(
                    "DELETE FROM {dead} AS n WHERE NOT EXISTS (SELECT FROM {table} AS e "
                    "WHERE e.id = n.id)"
                ).format(dead=sql.Identifier(layout.DEAD_LETTERS), table=table)
            )
            # Ids go on from the old table's sequence, with a gap: a collection opened
            # in this window (it takes an id from the sequence without the table's lock)
            # must not share its id with an event.
            [(last,)] = self._execute(
                sql.SQL(
                    "SELECT greatest((SELECT max(id) FROM {table}), pg_sequence_last_value("
                    "pg_get_serial_sequence({name}, 'id')::regclass))"
                ).format(table=table, name=sql.Literal(layout.TABLE))
            )
            if last:
                self._execute(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, true)",
                    [NEXT, last + ID_GAP],
                )
            self._copy_grants(layout.TABLE, NEXT)
            self._execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table, sql.Identifier(OLD)))
            self._execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(nxt, table))
            self._execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(OLD)))
            self._execute(
                sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
                    sql.Identifier(NEXT + "_id_seq"), sql.Identifier(layout.TABLE + "_id_seq")
                )
            )
            return {"rows": rows, "seconds": time.monotonic() - started}

    def _copy_grants(self, source: str, target: str) -> None:
        """`source`'s privileges on `target` (writers, a listener role; columns and grant
        options too), and the upkeep functions to whoever may delete events (a
        listener role) while they exist."""
        for grantee, privilege, column, grantable in self._execute(_GRANTS, {"table": source}):
            role = sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
            self._execute(
                sql.SQL("GRANT {privilege}{column} ON TABLE {target} TO {role}{option}").format(
                    privilege=sql.SQL(privilege),
                    column=sql.SQL(" ({})").format(sql.Identifier(column))
                    if column
                    else sql.SQL(""),
                    target=sql.Identifier(target),
                    role=role,
                    option=sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
            if privilege == "DELETE" and grantee is not None and target == NEXT:
                self._execute(
                    sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                        sql.SQL(", ").join(map(sql.SQL, layout.FUNCTIONS)), role
                    )
                )

    def to_plain(self) -> None:
        """The reverse, for ``migrate eventbus 0013``: one table again, with the indexes
        it had then. Not online: it copies everything under the table's lock."""
        partitioned, _ = self.state()
        if not partitioned:
            return
        table, plain = sql.Identifier(layout.TABLE), sql.Identifier(PLAIN)
        statements: list[Any] = [
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table),
            sql.SQL(
                "CREATE TABLE {plain} (LIKE {table} INCLUDING DEFAULTS INCLUDING IDENTITY "
                "INCLUDING CONSTRAINTS)"
            ).format(plain=plain, table=table),
            sql.SQL("ALTER TABLE {} DROP COLUMN slot").format(plain),
            sql.SQL("INSERT INTO {plain} ({cols}) SELECT {cols} FROM {table}").format(
                plain=plain, cols=_COLUMNS, table=table
            ),
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence({plain}, 'id'), greatest((SELECT max(id) "
                "FROM {table}), pg_sequence_last_value(pg_get_serial_sequence({name}, 'id')"
                "::regclass), 1))"
            ).format(plain=sql.Literal(PLAIN), table=table, name=sql.Literal(layout.TABLE)),
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT eventbus_event_pkey PRIMARY KEY (id)").format(
                plain
            ),
            *(sql.SQL(index).format(plain) for index in _PLAIN_INDEXES),
        ]
        swap: list[Any] = [
            sql.SQL("DROP TABLE {}").format(table),
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(plain, table),
            sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
                sql.Identifier(PLAIN + "_id_seq"), sql.Identifier(layout.TABLE + "_id_seq")
            ),
            *layout.DROP_FUNCTIONS,
            sql.SQL("DROP SEQUENCE IF EXISTS {}").format(sql.Identifier(layout.SLOT_SEQUENCE)),
        ]
        from django.db import transaction

        with transaction.atomic(using=self.connection.alias):
            for statement in statements:
                self._execute(statement)
            self._copy_grants(layout.TABLE, PLAIN)
            for statement in swap:
                self._execute(statement)


# The single table's indexes at eventbus 0013 (EventRecord's Meta then).
_PLAIN_INDEXES = (
    f"CREATE INDEX eventbus_event_runnable ON {{}} (id) WHERE state IN ('{PENDING}', '{FAILED}')",
    "CREATE INDEX eventbus_event_key_runnable ON {} (channel, key, id) "
    f"WHERE state IN ('{PENDING}', '{FAILED}') AND ordered",
    "CREATE INDEX eventbus_event_finished ON {} (finished_at) "
    f"WHERE state IN ('{DONE}', '{DEAD}')",
    f"CREATE INDEX eventbus_event_dead ON {{}} (channel, id) WHERE state = '{DEAD}'",
    "CREATE INDEX eventbus_event_collection ON {} (correlation_id) "
    "WHERE correlation_id IS NOT NULL",
)
