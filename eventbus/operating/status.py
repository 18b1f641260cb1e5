"""The read side: what happened to an event, in a shape for APIs and commands.

``running`` is not stored: a claim is a row lock inside the worker's transaction. An
event is running when it is runnable and a worker holds that lock right now.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from django.db import connections, transaction
from django.db.models import Q

from eventbus import sql
from eventbus.event import DEAD, DONE, FAILED, PENDING, RUNNABLE
from eventbus.models import EventRecord
from eventbus.running.connections import connection_params

RUNNING = "running"
# A collection's state is the worst of its members' states, in this order.
WORST_FIRST = (DEAD, FAILED, RUNNING, PENDING, DONE)


def claimed_ids(ids: Iterable[int], alias: str = "default") -> set[int]:
    """Which of `ids` a worker holds at this moment (never waits for a lock)."""
    ids = list(ids)
    if not ids:
        return set()
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(*sql.claimed(ids))
        return {row[0] for row in cursor.fetchall()}


def waiting_ids(ids: Iterable[int], alias: str = "default") -> set[int]:
    """Which of `ids` are pending and held by no worker at this moment: an event being
    handled, or finished since, is not among them (never waits for a lock)."""
    ids = list(ids)
    if not ids:
        return set()
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(*sql.waiting(ids))
        return {row[0] for row in cursor.fetchall()}


def describe(records: list[EventRecord], alias: str = "default") -> list[dict[str, Any]]:
    """Each event as a dict, its state `running` while a worker holds it."""
    running = claimed_ids((r.id for r in records if r.state in RUNNABLE), alias)
    return [as_dict(r, RUNNING if r.id in running else r.state) for r in records]


def as_dict(record: EventRecord, state: str | None = None) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": record.id,
        "channel": record.channel,
        "key": record.key,
        "state": state or record.state,
        "attempts": record.attempts,
        "created_at": iso(record.created_at),
        "first_claimed_at": iso(record.first_claimed_at),
        "finished_at": iso(record.finished_at),
        "run_after": iso(record.run_after),
        "worker": record.worker,
        "last_error": record.last_error,
        "caused_by": record.caused_by,
        "collection": record.correlation_id or record.id,
    }


def worst(states: Iterable[str]) -> str:
    """The state of a whole made of these: dead, failed, running, pending, else done."""
    present = set(states)
    return next((s for s in WORST_FIRST if s in present), DONE)


def collection_id(event_id: int, alias: str = "default") -> int | None:
    """The collection of `event_id`: the collection an event of that id belongs to, or
    `event_id` itself when it is a collection's id that no event has (one that
    ``eventbus.collection()`` reserved); None when it is neither."""
    events = EventRecord.objects.using(alias)
    found = events.filter(pk=event_id).values_list("correlation_id").first()
    if found is not None:
        return found[0] or event_id
    return event_id if events.filter(correlation_id=event_id).exists() else None


def collection(collection: int, alias: str = "default") -> dict[str, Any]:
    """A collection's members (oldest first, each as `as_dict`) and its overall state.

    `collection` is a collection's id (its root event's id, or the one that
    ``eventbus.collection()`` reserved). A collection with no events is ``pending``:
    its events may not be committed yet, or were purged.
    """
    records = list(
        EventRecord.objects.using(alias)
        .filter(Q(pk=collection) | Q(correlation_id=collection))
        .order_by("id")
    )
    members = describe(records, alias)
    return {
        "collection": collection,
        "state": worst(m["state"] for m in members) if members else PENDING,
        "events": members,
    }


def tree_order(events: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Events depth first, each under the event that caused it (roots in id order)."""
    ids = {e["id"] for e in events}
    children: dict[int | None, list[dict[str, Any]]] = {}
    for event in events:
        parent = event["caused_by"] if event["caused_by"] in ids else None
        children.setdefault(parent, []).append(event)
    ordered: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, e) for e in reversed(children.get(None, []))]
    while stack:
        depth, event = stack.pop()
        ordered.append((depth, event))
        stack += [(depth + 1, c) for c in reversed(children.get(event["id"], []))]
    return ordered


def backlog(alias: str = "default") -> dict[str, tuple[int, float]]:
    """Runnable events per channel: (count, seconds the oldest due one has waited)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.BACKLOG)
        return _backlog_rows(cursor.fetchall())


def backlog_direct(alias: str = "default") -> dict[str, tuple[int, float]]:
    """As `backlog`, on a short-lived connection of its own (safe from any thread)."""
    with psycopg.connect(connect_timeout=3, **connection_params(connections[alias])) as conn:
        return _backlog_rows(conn.execute(sql.BACKLOG).fetchall())


def _backlog_rows(rows: list[tuple[Any, ...]]) -> dict[str, tuple[int, float]]:
    return {channel: (int(n), float(age or 0)) for channel, n, age in rows}


def newest_ids(scope: sql.Scope, limit: int, alias: str = "default") -> list[int]:
    """Ids of the newest `limit` events of `scope`, whatever their channel's handlers."""
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.newest_ids(scope, limit))
        return [row[0] for row in cursor.fetchall()]
