"""Scenarios 1 and 2: drain rate of `listen --processes P` against a plain-SQL ceiling.

N bench_noop events (trivial handler) are written in batches while the listener runs;
the rate is events per second from the first write to the last event done. The ceiling
is the same claim-and-mark loop in plain psycopg (no Django, no handler) with P processes
and the same batch size, measured in the same run. The dashboard's rollup (written in each
batch's mark statement) is measured by running `isolation="batch"` again with it off
(`EVENTBUS_ROLLUP=0`), alternating the two `--rounds` times, best of each.

    ./run bench throughput [--events 100000] [--processes 1 2 4] [--batch-size 500] [--full]
                           [--rounds 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common
from eventbus.storing.layout import COLUMNS

CEILING_CLAIM = (
    "SELECT id FROM eventbus_event WHERE state IN ('pending', 'failed') "
    "AND run_after <= statement_timestamp() ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
NO_ROLLUP = {"EVENTBUS_ROLLUP": "0"}  # the dashboard's per-minute rollup off
PIN_PLAN = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off"
# The mark as the engine makes it on the partitioned storage (eventbus.storing): the row
# moves out of the queue into history, same id. (An UPDATE of the state would move it as
# well, but a concurrent claim that meets a row moved so fails, where a deleted one is
# skipped.)
_KEPT = ", ".join(c for c in COLUMNS if c not in ("state", "attempts", "finished_at"))
CEILING_MARK = (
    "WITH gone AS (DELETE FROM eventbus_event WHERE id = ANY(%s) "
    "AND state IN ('pending', 'failed') RETURNING *) "
    f"INSERT INTO eventbus_event ({_KEPT}, state, attempts, finished_at) "
    f"SELECT {_KEPT}, 'done', attempts + 1, clock_timestamp() FROM gone"
)


def _ceiling_worker(url: str, batch: int, done: Any, total: int) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        while done.value < total:
            with conn.transaction():
                conn.execute(PIN_PLAN)  # the same plan pinning as eventbus: a fair ceiling
                ids = [r[0] for r in conn.execute(CEILING_CLAIM, [batch]).fetchall()]
                if ids:  # bound on the client, as Django binds: a custom plan each time
                    conn.execute(CEILING_MARK, [ids], prepare=False)
            if ids:
                with done.get_lock():
                    done.value += len(ids)
            else:
                time.sleep(0.001)


def ceiling(url: str, events: int, processes: int, batch: int) -> float:
    """The same as `eventbus`, with plain psycopg claim-and-mark loops as consumers."""
    _reset(url)
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Value("q", 0)
    workers = [
        ctx.Process(target=_ceiling_worker, args=(url, batch, done, events))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    time.sleep(1.0)  # connected and polling
    started = time.perf_counter()
    common.write_noop_events(url, events)
    for w in workers:
        w.join()
    return events / (time.perf_counter() - started)


def eventbus(
    url: str,
    events: int,
    processes: int,
    batch: int,
    channel: str,
    env: dict[str, str] | None = None,
) -> float:
    """From the first write to the last event handled, with `listen` running."""
    _reset(url)
    listener = common.Listener(
        url, "--processes", str(processes), "--batch-size", str(batch), env=env
    )
    try:
        listener.wait_ready(processes, url)
        started = time.perf_counter()
        common.write_noop_events(url, events, channel=channel)
        finished = common.wait_for(lambda: common.drained(url), 600, 0.01)
    finally:
        listener.stop()
    return events / (finished - started)


def _reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE eventbus_event, eventbus_rollup")
        conn.execute("VACUUM ANALYZE eventbus_event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--full", action="store_true", help="1,000,000 events per run")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs with the rollup on and off, alternated"
    )
    args = parser.parse_args()
    events = args.events or (1_000_000 if args.full else 100_000)
    url = common.setup()
    rows = []
    for p in args.processes:
        roof = ceiling(url, events, p, args.batch_size)
        shared, unrolled = 0.0, 0.0
        for _ in range(max(args.rounds, 1)):  # on, off, on, off: drift falls on both
            shared = max(shared, eventbus(url, events, p, args.batch_size, "bench_noop"))
            unrolled = max(
                unrolled,
                eventbus(url, events, p, args.batch_size, "bench_noop", env=NO_ROLLUP),
            )
        # The default isolation: each handler call in its own savepoint, opened at its
        # first query (a trivial handler sends none).
        isolated = eventbus(url, events, p, args.batch_size, "bench_noop_isolated")
        rows.append(
            {
                "processes": p,
                "events": events,
                "batch": args.batch_size,
                "ceiling_per_s": round(roof),
                "eventbus_per_s": round(shared),
                "fraction": round(shared / roof, 2),
                "per_event_savepoints_per_s": round(isolated),
                "per_event_fraction": round(isolated / roof, 2),
                "no_rollup_per_s": round(unrolled),
                "rollup_cost": round(1 - shared / unrolled, 3),
            }
        )
    common.report(
        "throughput",
        [
            "processes",
            "events",
            "batch",
            "ceiling_per_s",
            "eventbus_per_s",
            "fraction",
            "per_event_savepoints_per_s",
            "per_event_fraction",
            "no_rollup_per_s",
            "rollup_cost",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
