"""Operator actions on the event table: re-queue failed or dead events, purge history.

An operator's purge deletes rows (a chosen channel, state or age); the listeners'
retention drops whole history partitions instead (``purge_expired``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from django.db import connections, transaction
from django.utils import timezone

from eventbus import sql
from eventbus.event import DEAD, DONE, FAILED
from eventbus.storing import upkeep

REQUEUABLE = (FAILED, DEAD)
PURGEABLE = (DONE, DEAD)


def requeue(scope: sql.Scope, alias: str = "default") -> list[tuple[int, str]]:
    """Make the failed or dead events of `scope` pending and due now; wake the listeners
    and tell followers (`events follow`), always: it is rare, so its NOTIFY costs nothing.

    Attempts are kept: a re-queued dead event gets one more attempt, as with recover.
    Returns (id, channel) of each event re-queued.
    """
    states = tuple(s for s in scope.states if s in REQUEUABLE)
    if not states:
        return []
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(*sql.requeue(replace(scope, states=states)))
        rows = [(int(i), str(c)) for i, c in cursor.fetchall()]
        if rows:
            cursor.execute(*sql.notify_channels([c for _, c in rows]))
            cursor.execute(sql.NOTIFY_CHANGES)  # an operator's act: `events follow` sees it
    return rows


def purge(
    scope: sql.Scope,
    before: datetime | None,
    batch_size: int = 1000,
    max_batches: int | None = None,
    alias: str = "default",
    lock: int | None = None,
    unfinished: bool = False,
) -> int:
    """Delete the events of `scope` older than `before` in batches of `batch_size`, each
    in its own short transaction; an event a worker holds right now is skipped. Without
    `max_batches`, events written after the purge began are left alone.

    Done and dead events are history. Pending and failed ones are work not yet done, so
    they are deleted only with `unfinished` (an operator cleaning up a removed channel).
    With `lock`, each batch first takes that transaction-level advisory lock and the purge
    stops when another session holds it (transaction-level, so it also works through a
    transaction-pooling PgBouncer, where a session lock could stay on a pooled connection).
    """
    refused = set(scope.states) - set(PURGEABLE)
    if refused and not unfinished:
        raise ValueError(f"only {', '.join(PURGEABLE)} events can be purged, not {sorted(refused)}")
    if max_batches is None and scope.upto_id is None:  # ends even while writers keep writing
        with connections[alias].cursor() as cursor:
            cursor.execute(sql.max_id())
            scope = replace(scope, upto_id=cursor.fetchone()[0])
    total, batches = 0, 0
    while max_batches is None or batches < max_batches:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            if lock is not None:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [lock])
                if not cursor.fetchone()[0]:
                    break
            cursor.execute(*sql.purge_batch(scope, before, batch_size))
            deleted = cursor.rowcount
        total += deleted
        batches += 1
        if deleted < batch_size:
            break
    return total


def purgeable(
    scope: sql.Scope, before: datetime | None, alias: str = "default"
) -> dict[tuple[str, str], int]:
    """What `purge` would delete now, per (channel, state). Touches nothing."""
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.count_purgeable(scope, before))
        return {(channel, state): count for channel, state, count in cursor.fetchall()}


def purge_expired(
    retention_seconds: float, alias: str = "default", now: datetime | None = None
) -> int:
    """The listeners' retention of done events: whole history partitions that ended more
    than `retention_seconds` ago are truncated and dropped (eventbus.storing); no row is
    deleted, so retention adds no write load and leaves nothing for VACUUM. Done events
    are kept at least the retention, and at most one partition span more."""
    before = (now or timezone.now()) - timedelta(seconds=retention_seconds)
    return upkeep.expire_history(before, alias)


def discard(ids: list[int], reason: str, alias: str = "default") -> list[int]:
    """Stop retrying pending or failed events: they become dead, kept, with `reason`."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(*sql.discard(ids, reason))
        return [row[0] for row in cursor.fetchall()]
