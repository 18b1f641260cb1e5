"""Scenario 3: latency at a steady write rate, from commit to handler start.

Writers (one per 500 events/s) commit one bench_noop event per transaction at R events/s
in all, for D seconds, while
`listen --processes 2` runs. Latency per event is first_claimed_at (the claim
transaction's start, just before the handler runs) minus created_at (the insert, which
commits at once).

    ./run bench latency [--rates 500 2000] [--seconds 10] [--full]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common

INSERT = (
    "WITH e AS (INSERT INTO eventbus_event (channel, operation, table_name, new) "
    "VALUES ('bench_noop', 'PUBLISH', '', '{}') RETURNING id) "
    "SELECT pg_notify('eventbus_bench_noop', '') FROM e"
)
PERCENTILES = (
    "SELECT count(*), "
    "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms), max(ms) FROM "
    "(SELECT extract(epoch FROM first_claimed_at - created_at) * 1000 AS ms "
    "FROM eventbus_event WHERE state = 'done') AS l"
)


def _writer(url: str, rate: float, total: int, start_at: float) -> None:
    """Commit one event per transaction at `rate` per second (the clock is shared)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(total):
            delay = start_at + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            conn.execute(INSERT)


def steady(url: str, rate: int, seconds: float, writers: int) -> dict[str, float]:
    import multiprocessing

    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE eventbus_event")
    total = int(rate * seconds)
    each = total // writers
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.0  # all writers connected first
    procs = [
        ctx.Process(target=_writer, args=(url, rate / writers, each, start_at))
        for _ in range(writers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    achieved = each * writers / (time.time() - start_at)
    common.wait_for(lambda: common.drained(url), 60)
    with psycopg.connect(url) as conn:
        n, (p50, p95, p99), worst = conn.execute(PERCENTILES).fetchone()
    return {
        "rate_per_s": rate,
        "writers": writers,
        "achieved_per_s": round(achieved),
        "events": n,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "max_ms": float(worst),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="20 s per rate")
    args = parser.parse_args()
    seconds = args.seconds or (20.0 if args.full else 10.0)
    url = common.setup()
    listener = common.Listener(url, "--processes", str(args.processes))
    try:
        listener.wait_ready(args.processes, url)
        rows = [steady(url, rate, seconds, max(1, rate // 500)) for rate in args.rates]
    finally:
        listener.stop()
    common.report(
        "latency",
        [
            "rate_per_s",
            "writers",
            "achieved_per_s",
            "events",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
