"""Every query the engine runs against the event table, in one place.

Identifiers and fixed states are composed with ``psycopg.sql``; values are parameters.
States are inlined as literals on purpose: the partial index ``WHERE state = 'pending'``
can only serve a query whose predicate names the literal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from eventbus.event import DONE, PENDING

TABLE = sql.Identifier("eventbus_event")

CLAIM_COLUMNS = sql.SQL("id, channel, operation, table_name, key, old, new, created_at, attempts")


@dataclass(frozen=True)
class Scope:
    """Which events a claim may take.

    The listener claims pending events; ``recover`` also takes failed ones, walks ids in
    order (``after_id``) and stops at the newest id that existed when it began (``upto_id``).
    """

    states: tuple[str, ...] = (PENDING,)
    channels: tuple[str, ...] | None = None
    since: datetime | None = None
    after_id: int | None = None
    upto_id: int | None = None


def claim(scope: Scope, limit: int) -> tuple[sql.Composed, dict[str, Any]]:
    """Lock and return up to `limit` events of `scope`, oldest first, skipping locked ones."""
    where, params = _where(scope)
    query = sql.SQL(
        "SELECT {columns} FROM {table} WHERE {where} ORDER BY id LIMIT %(limit)s "
        "FOR UPDATE SKIP LOCKED"
    ).format(columns=CLAIM_COLUMNS, table=TABLE, where=where)
    return query, {**params, "limit": limit}


def count_by_channel_and_state(scope: Scope) -> tuple[sql.Composed, dict[str, Any]]:
    where, params = _where(scope)
    query = sql.SQL(
        "SELECT channel, state, count(*) FROM {table} WHERE {where} "
        "GROUP BY channel, state ORDER BY channel, state"
    ).format(table=TABLE, where=where)
    return query, params


def max_id() -> sql.Composed:
    return sql.SQL("SELECT coalesce(max(id), 0) FROM {table}").format(table=TABLE)


def _where(scope: Scope) -> tuple[sql.Composable, dict[str, Any]]:
    if len(scope.states) == 1:
        parts: list[sql.Composable] = [sql.SQL("state = {}").format(sql.Literal(scope.states[0]))]
    else:
        parts = [
            sql.SQL("state IN ({})").format(sql.SQL(", ").join(map(sql.Literal, scope.states)))
        ]
    params: dict[str, Any] = {}
    if scope.channels is not None:
        parts.append(sql.SQL("channel = ANY(%(channels)s)"))
        params["channels"] = list(scope.channels)
    if scope.since is not None:
        parts.append(sql.SQL("created_at >= %(since)s"))
        params["since"] = scope.since
    if scope.after_id is not None:
        parts.append(sql.SQL("id > %(after_id)s"))
        params["after_id"] = scope.after_id
    if scope.upto_id is not None:
        parts.append(sql.SQL("id <= %(upto_id)s"))
        params["upto_id"] = scope.upto_id
    return sql.SQL(" AND ").join(parts), params


MARK_DONE = sql.SQL(
    "UPDATE {table} SET state = {done}, attempts = attempts + 1, "
    "first_claimed_at = coalesce(first_claimed_at, now()), finished_at = clock_timestamp(), "
    "worker = %s WHERE id = ANY(%s)"
).format(table=TABLE, done=sql.Literal(DONE))

MARK_ERRORS = sql.SQL(
    "UPDATE {table} AS e SET state = f.state, attempts = e.attempts + 1, "
    "first_claimed_at = coalesce(e.first_claimed_at, now()), finished_at = clock_timestamp(), "
    "worker = %s, last_error = f.error "
    "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS f(id, state, error) WHERE e.id = f.id"
).format(table=TABLE)


def mark_done(worker: str, ids: Sequence[int]) -> tuple[sql.Composed, list[Any]]:
    return MARK_DONE, [worker, list(ids)]


def mark_errors(
    worker: str, errors: Sequence[tuple[int, str, str]]
) -> tuple[sql.Composed, list[Any]]:
    """Record (id, new state, error) for each event whose handler raised."""
    ids, states, texts = zip(*errors, strict=True) if errors else ((), (), ())
    return MARK_ERRORS, [worker, list(ids), list(states), list(texts)]
