"""What the dashboard shows, as data: per queue, the flow of the last hour and what waits now;
per minute, the last hour and day of throughput, failures and backlog.

The flow (handled, failed and dead attempts, handler durations) comes from the rollup the
workers write (``eventbus.operating.rollup``), so it is still there after done events are
purged. What waits (backlog, oldest due, failed and dead events) is counted live from the
event table, each count served by a partial index. Five small queries, whatever the size
of the table's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connections

from eventbus import sql
from eventbus.declaring import registry
from eventbus.operating import pauses, rollup

HOUR = 60  # minutes
DAY = 1440
# Minutes the rate is the mean of: the 4 whole ones before, and as much of the current
# one as has passed (so a steady flow reads the same at any second of the minute).
RECENT = 5
DAY_STEP = 15  # minutes per point of the day's charts


@dataclass(frozen=True)
class QueueRow:
    """One channel, or one subscription of a channel that has several."""

    queue: str
    per_minute: float  # handled per minute, over the last RECENT minutes
    handled: int  # in the last hour (this minute included)
    failed_attempts: int  # attempts that failed and run again, last hour
    died: int  # attempts that ended dead, last hour
    backlog: int  # runnable now: pending or failed
    oldest_due: float  # seconds the oldest due event has waited (0: none due)
    failed: int  # failed now, waiting for their retry
    dead: int  # dead now
    p50: float | None  # handler seconds, last hour (None: no attempt)
    p95: float | None
    paused_by: str | None  # the paused name that holds it: itself or its channel


@dataclass(frozen=True)
class Series:
    """Points `step` minutes apart from `start`, the last one holding the current minute."""

    start: datetime
    step: int
    handled: list[int]
    failures: list[int]  # failed or dead attempts
    backlog: list[int | None]  # the largest sample in the step (None: never sampled)


@dataclass(frozen=True)
class Overview:
    now: datetime  # the database's current minute
    rows: list[QueueRow]
    hour: Series
    day: Series


def overview(queue: str | None = None, alias: str = "default") -> Overview:
    """The dashboard's numbers; the series cover `queue` alone, or every queue."""
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.ROLLUP_NOW)
        now, elapsed = cursor.fetchone()  # the current minute, and seconds into it
        hour, day = now - timedelta(minutes=HOUR - 1), now - timedelta(minutes=DAY - 1)
        recent = now - timedelta(minutes=RECENT - 1)
        cursor.execute(sql.ROLLUP_TOTALS, {"hour": hour, "recent": recent, "day": day})
        totals = {row[0]: [int(n) for n in row[1:]] for row in cursor.fetchall()}
        cursor.execute(sql.ROLLUP_HISTOGRAMS, {"since": hour})
        histograms: dict[str, list[int]] = {}
        for name, n, count in cursor.fetchall():
            buckets = histograms.setdefault(name, [0] * rollup.BUCKETS)
            buckets.extend([0] * (n - len(buckets)))
            buckets[n - 1] += int(count)
        cursor.execute(sql.DASHBOARD_LIVE)
        live: dict[str, list[float]] = {}
        for name, backlog, failed, dead, oldest in cursor.fetchall():
            counts = live.setdefault(name, [0, 0, 0, 0.0])
            counts[0] += backlog
            counts[1] += failed
            counts[2] += dead
            counts[3] = max(counts[3], float(oldest))
        cursor.execute(sql.PAUSED)
        paused = {row[0] for row in cursor.fetchall()}
        cursor.execute(sql.ROLLUP_SERIES, {"since": day, "queues": [queue] if queue else None})
        minutes = {row[0]: row[1:] for row in cursor.fetchall()}
    names = sorted({*registry.queue_names(), *totals, *live})
    rows = []
    for name in names:
        handled, failed_attempts, died, recent_handled = totals.get(name, [0, 0, 0, 0])
        backlog, failed, dead, oldest = live.get(name, [0, 0, 0, 0.0])
        durations = histograms.get(name, [])
        rows.append(
            QueueRow(
                queue=name,
                per_minute=recent_handled / (RECENT - 1 + float(elapsed) / 60),
                handled=handled,
                failed_attempts=failed_attempts,
                died=died,
                backlog=int(backlog),
                oldest_due=oldest,
                failed=int(failed),
                dead=int(dead),
                p50=rollup.percentile(durations, 0.50),
                p95=rollup.percentile(durations, 0.95),
                paused_by=pauses.paused_by(name, paused),
            )
        )
    return Overview(
        now=now,
        rows=rows,
        hour=_series(minutes, hour, HOUR, 1),
        day=_series(minutes, day, DAY // DAY_STEP, DAY_STEP),
    )


def _series(
    minutes: dict[datetime, tuple[int, int, int | None]], start: datetime, points: int, step: int
) -> Series:
    handled = [0] * points
    failures = [0] * points
    backlog: list[int | None] = [None] * points
    for minute, (done, failed, waiting) in minutes.items():
        index = int((minute - start).total_seconds() // 60) // step
        if not 0 <= index < points:
            continue
        handled[index] += int(done or 0)
        failures[index] += int(failed or 0)
        if waiting is not None:
            backlog[index] = max(backlog[index] or 0, int(waiting))
    return Series(start=start, step=step, handled=handled, failures=failures, backlog=backlog)
