"""Scenario 9: what recording causation costs a handler that writes.

Before a handler's first write that can make an event, the executor sets two
transaction-local settings (``eventbus.running.savepoints``). With a per-event savepoint
they ride in the savepoint's own string; with ``isolation="batch"`` they cost a round
trip, but only before a write to a table that has triggers. Here one handler inserts one
row per event, drained in-process by the real executor (``eventbus.testing.run_events``,
batches of 500), in three cases: the default isolation, and ``isolation="batch"`` writing
a table with a trigger and one without. Each case alternates causation on and off
(off: the executor never sets a cause, as before issue 13) over several rounds; the
median of the rounds is reported, and the ratio on/off.

    ./run bench causation [--events 5000] [--rounds 5] [--full]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common

ROWS = "CREATE TABLE IF NOT EXISTS bench_cause_{name} (id bigserial PRIMARY KEY, event_id bigint)"
NOOP_TRIGGER = (
    "CREATE OR REPLACE FUNCTION bench_cause_noop() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN RETURN NULL; END$$; "
    "DROP TRIGGER IF EXISTS bench_cause_t ON bench_cause_triggered; "
    "CREATE TRIGGER bench_cause_t AFTER INSERT ON bench_cause_triggered "
    "FOR EACH STATEMENT EXECUTE FUNCTION bench_cause_noop()"
)
CASES = (  # (channel, isolation, table written)
    ("bench_cause_event", "event", "triggered"),
    ("bench_cause_batch_triggered", "batch", "triggered"),
    ("bench_cause_batch_plain", "batch", "plain"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="50,000 events, 7 rounds")
    args = parser.parse_args()
    if args.full:
        args.events, args.rounds = 50_000, 7
    url = common.setup()

    from django.db import connection

    from eventbus import Channel, Event
    from eventbus.running import savepoints
    from eventbus.testing import run_events

    with connection.cursor() as cursor:
        for name in ("triggered", "plain"):
            cursor.execute(ROWS.format(name=name))
        cursor.execute(NOOP_TRIGGER)

    for channel_name, isolation, table in CASES:
        insert = f"INSERT INTO bench_cause_{table} (event_id) VALUES (%s)"

        def write(event: Event, insert: str = insert) -> None:
            with connection.cursor() as cursor:
                cursor.execute(insert, [event.id])

        Channel(channel_name, operations=(), isolation=isolation).on(write)

    causing = savepoints.Pipeline.caused_by

    def never(self: Any, event_id: int | None, collection: int | None) -> None:
        return None

    def drain(channel: str, on: bool) -> float:
        savepoints.Pipeline.caused_by = causing if on else never  # type: ignore[method-assign]
        common.write_noop_events(url, args.events, channel=channel)
        started = time.perf_counter()
        run_events([channel], batch_size=500)
        return args.events / (time.perf_counter() - started)

    rows = []
    for channel, isolation, table in CASES:
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for on in (False, True):
                rates[on].append(drain(channel, on))
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        rows.append(
            {
                "isolation": isolation,
                "writes": f"a table with {'a trigger' if table == 'triggered' else 'none'}",
                "without": off,
                "with causation": on,
                "ratio": on / off,
            }
        )
    savepoints.Pipeline.caused_by = causing  # type: ignore[method-assign]
    common.report(
        "causation",
        ["isolation", "writes", "without", "with causation", "ratio"],
        rows,
        extra={"events": args.events, "rounds": args.rounds},
        notes=[f"events/s, median of {args.rounds} rounds; one process, in-process executor"],
    )


if __name__ == "__main__":
    main()
