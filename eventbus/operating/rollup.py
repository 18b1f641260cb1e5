"""The per-minute rollup behind the dashboard: what was handled, failed and died, and how long
handlers took, per queue and minute.

The event table cannot answer "how many per minute" for long: done events are purged
after ``DONE_RETENTION``, and counting them would scan history. So each claim transaction
adds its batch to its own row per (minute, queue) of ``eventbus_rollup``, inside the statement
that marks the batch (a CTE of ``sql.mark_done`` / ``sql.mark_errors``): no round trip of
its own, and the counts commit exactly when the events' new states do. The rows stay
for ``ROLLUP_RETENTION`` (7 days), purged by the listeners' background purge.

Durations are kept as a fixed log-scale histogram per row (four buckets per doubling,
0.1 ms to about 105 s), so p50 and p95 over any set of rows come from their summed
buckets, to within a bucket's width (19 %).

Backlog is a state, not a count of what happened: once a minute one listener samples each
queue's runnable events into that minute's rows (`sample`), for the backlog chart.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connections

from eventbus import sql
from eventbus.event import DEAD, DONE

# Upper bounds of the duration buckets, in seconds: bucket 0 holds what is under 0.1 ms,
# bucket i what is in [BOUNDS[i-1], BOUNDS[i]), the last one what is 105 s or longer.
BUCKET_BOUNDS: tuple[float, ...] = tuple(1e-4 * 2 ** (i / 4) for i in range(81))
BUCKETS = len(BUCKET_BOUNDS) + 1


def bucket(seconds: float) -> int:
    return bisect_right(BUCKET_BOUNDS, seconds)


def rows(outcomes: Iterable[Any], writer: str) -> sql.RollupRows | None:
    """A batch's outcomes (``Outcome``: channel, status, seconds) per queue, for the mark
    by `writer` (the claim connection's name: its own rows).

    An attempt that never ran a handler (a worker death, an outcome that could not be
    recorded) has no duration (0.0) and is counted but left out of the histogram.
    """
    tallies: dict[str, list[Any]] = {}  # queue -> [handled, failed, died, seconds, histogram]
    bounds = BUCKET_BOUNDS
    for outcome in outcomes:
        tally = tallies.get(outcome.channel)
        if tally is None:
            tally = tallies[outcome.channel] = [0, 0, 0, 0.0, [0] * BUCKETS]
        status = outcome.status
        if status == DONE:
            tally[0] += 1
        elif status == DEAD:
            tally[2] += 1
        else:  # failed, or pending again after a transient error: it runs again
            tally[1] += 1
        seconds = outcome.seconds
        if seconds > 0.0:
            tally[3] += seconds
            tally[4][bisect_right(bounds, seconds)] += 1
    if not tallies:
        return None
    queues = sorted(tallies)
    return sql.RollupRows(
        writer=writer,
        queues=queues,
        handled=[tallies[q][0] for q in queues],
        failed=[tallies[q][1] for q in queues],
        died=[tallies[q][2] for q in queues],
        seconds=[tallies[q][3] for q in queues],
        histograms=[sql.int_array(tallies[q][4]) for q in queues],
    )


def percentile(histogram: Sequence[int], fraction: float) -> float | None:
    """The duration below which `fraction` of the attempts in `histogram` fell, or None
    when it holds none. Interpolated on the log scale inside the bucket that holds it;
    the lowest bucket answers with its upper bound, and the open-ended top one with
    ``math.inf`` ("over the last bound": never a number below the truth)."""
    total = sum(histogram)
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(histogram):
        if not count or seen + count < rank:
            seen += count
            continue
        if index == 0:
            return BUCKET_BOUNDS[0]
        if index >= len(BUCKET_BOUNDS):
            return math.inf
        low, high = BUCKET_BOUNDS[index - 1], BUCKET_BOUNDS[index]
        share = max(0.0, min(1.0, (rank - seen) / count))
        return low * math.exp(share * math.log(high / low))
    return math.inf


def sample(queues: Sequence[str], alias: str = "default") -> None:
    """Record this minute's backlog per queue, unless a listener already did (see
    ``sql.ROLLUP_SAMPLE``); `queues` get a row even with nothing waiting."""
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.ROLLUP_SAMPLE, {"queues": list(queues)})


def purge_expired(retention_seconds: float, alias: str = "default") -> int:
    """Delete rollup minutes older than the retention; returns how many rows."""
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.ROLLUP_PURGE, [retention_seconds])
        return cursor.rowcount
