"""The SQL for a least-privilege listener role: the event tables, and what handlers touch.

A listener needs to claim, mark, publish and purge events (the event table), send
heartbeats (the worker table), and whatever its handlers read or write. Nothing else: no
DDL, no tables beyond those named, no ownership. The storage's upkeep (queue rotation,
history partitions) is DDL, so it runs in functions owned by the tables' owner, which
the role may execute. Triggers run with the writer's rights, so
a handler that updates a table with a channel trigger also needs INSERT on the event
table, which the role has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from django.apps import apps
from psycopg import sql

from eventbus.models import (
    DeadAlertRecord,
    EventRecord,
    InflightRecord,
    PauseRecord,
    RollupRecord,
    TaskResultRecord,
    WorkerRecord,
)
from eventbus.storing import layout

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
READ = ("SELECT",)
UPDATE = ("SELECT", "UPDATE")
WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")
ENGINE_MODELS = (
    EventRecord,
    WorkerRecord,
    InflightRecord,
    TaskResultRecord,
    DeadAlertRecord,
    RollupRecord,
    PauseRecord,
)


def tables(labels: Sequence[str]) -> list[str]:
    """Table names of models given as ``app_label.Model`` (name M2M through models too)."""
    names: list[str] = []
    for label in labels:
        try:
            names.append(apps.get_model(label)._meta.db_table)
        except (LookupError, ValueError) as exc:
            raise ValueError(f"unknown model {label!r} (expected app_label.Model)") from exc
    return list(dict.fromkeys(names))


def listener_role(
    role: str,
    read: Sequence[str] = (),
    update: Sequence[str] = (),
    write: Sequence[str] = (),
    schema: str = "public",
) -> str:
    """The SQL, idempotent, to run as the tables' owner in the application database."""
    for what, name in (("role", role), ("schema", schema)):
        if not NAME.match(name):
            raise ValueError(f"{what} {name!r} is not a plain identifier")
    r = sql.Identifier(role)

    def grant(privileges: Sequence[str], names: Sequence[str]) -> sql.Composed:
        return sql.SQL("GRANT {} ON TABLE {} TO {};").format(
            sql.SQL(", ").join(sql.SQL(p) for p in privileges),
            sql.SQL(", ").join(sql.Identifier(schema, n) for n in names),
            r,
        )

    command = " ".join(
        ["./manage.py eventbus_role", role]
        + [
            f"--{name} {' '.join(labels)}"
            for name, labels in (("read", read), ("update", update), ("write", write))
            if labels
        ]
        + ([f"--schema {schema}"] if schema != "public" else [])
    )
    statements: list[sql.Composable] = [
        sql.SQL("-- A least-privilege eventbus listener role, made by:"),
        sql.SQL("--   " + command),
        sql.SQL("-- Run as the tables' owner; then: ALTER ROLE {} PASSWORD '…';").format(r),
        sql.SQL(
            "DO $$ BEGIN\n"
            "  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN\n"
            "    CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;\n"
            "  END IF;\n"
            "  EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), {name});\n"
            "END $$;"
        ).format(name=sql.Literal(role), role=r),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {};").format(sql.Identifier(schema), r),
        sql.SQL(
            "-- claim, mark, publish and purge events; heartbeats; tasks' return values; "
            "the limit of alerts on death; the dashboard's rollup; pauses"
        ),
        grant(WRITE, [m._meta.db_table for m in ENGINE_MODELS]),
        sql.SQL(
            "-- keep the storage small: rotate the queue, make and drop history partitions "
            "(functions that run as the tables' owner)"
        ),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {};").format(
            sql.SQL(", ").join(
                sql.SQL("{}.{}").format(sql.Identifier(schema), sql.SQL(signature))
                for signature in layout.FUNCTIONS
            ),
            r,
        ),
    ]
    for comment, privileges, labels in (
        ("what the handlers read", READ, read),
        ("what the handlers update", UPDATE, update),
        ("what the handlers write", WRITE, write),
    ):
        if labels:
            statements += [sql.SQL("-- " + comment), grant(privileges, tables(labels))]
    return "\n".join(s.as_string(None) for s in statements) + "\n"
