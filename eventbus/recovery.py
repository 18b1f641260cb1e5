"""Replay events that were never handled, or that failed, through the normal claim path.

Because replay claims with ``FOR UPDATE SKIP LOCKED`` exactly as listeners do, it is safe
to run while listeners run: an event a listener holds is skipped here and finished there,
and every event is still handled once. Replay walks ids upwards and stops at the newest id
that existed when it began, so a handler that keeps failing cannot loop it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from django.db import connections

from eventbus import registry, sql
from eventbus.event import DEAD, FAILED, PENDING
from eventbus.executor import Executor, Outcome
from eventbus.worker import worker_name

REPLAYABLE = (PENDING, FAILED)


@dataclass
class Summary:
    """Outcomes per (channel, outcome) and what is still failed in scope afterwards."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    still_failed: int = 0  # failed or dead, in scope, at the end


def scope_for(
    channels: tuple[str, ...] | None,
    since: datetime | None,
    *,
    dead: bool = False,
    ids: tuple[int, ...] | None = None,
) -> sql.Scope:
    """Pending and failed events (failed ones without waiting for their retry), or dead ones."""
    return sql.Scope(
        states=(DEAD,) if dead else REPLAYABLE,
        channels=channels,
        ids=ids,
        since=since,
        due_only=False,
        ordered_channels=tuple(registry.ordered_channel_names()),
    )


def plan(scope: sql.Scope, alias: str = "default") -> dict[tuple[str, str], int]:
    """What a replay would take now: counts per (channel, state). Touches nothing."""
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.count_by_channel_and_state(scope))
        return {(channel, state): count for channel, state, count in cursor.fetchall()}


def replay(
    scope: sql.Scope,
    batch_size: int,
    alias: str = "default",
    on_batch: Callable[[list[Outcome]], None] | None = None,
) -> Summary:
    executor = Executor(f"recover@{worker_name()}", alias)
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.max_id())
        (upto_id,) = cursor.fetchone()
    summary = Summary()
    touched: list[int] = []
    cursor_id = 0
    while True:
        batch_scope = replace(scope, after_id=cursor_id, upto_id=upto_id)
        outcomes = executor.run_batch(batch_scope, batch_size)
        if not outcomes:
            break
        cursor_id = max(o.event_id for o in outcomes)
        touched.extend(o.event_id for o in outcomes if o.status in (FAILED, DEAD))
        for outcome in outcomes:
            summary.outcomes[(outcome.channel, "handled" if outcome.ok else outcome.status)] += 1
        if on_batch is not None:
            on_batch(outcomes)
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.count_unresolved(replace(scope, upto_id=upto_id), touched))
        (summary.still_failed,) = cursor.fetchone()
    return summary
