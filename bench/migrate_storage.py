"""The online move to the partitioned storage (eventbus 0014), under load.

A single event table as eventbus 0013 left it is filled with N done events (spread over
the last three days), a few hundred dead ones and a backlog of pending ones; then
`migrate eventbus` runs while a writer commits one event per transaction as fast as it
can and a listener handles them. It reports how long the move took, how long the final
step held the table (the window in which writes and claims wait), and the writer's
longest commit: what the application felt.

    ./run bench migrate_storage [--done 300000] [--full]

`--full`: 3,000,000 done events.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common
from bench.database import fresh_database

FILL = (
    "INSERT INTO eventbus_event (channel, operation, table_name, new, state, attempts, "
    "created_at, finished_at) SELECT 'bench_noop', 'PUBLISH', '', '{}', %s, 1, "
    "now() - make_interval(secs => g * %s), now() - make_interval(secs => g * %s) "
    "FROM generate_series(1, %s) AS g"
)
WRITE = (
    "INSERT INTO eventbus_event (channel, operation, table_name, new) "
    "VALUES ('bench_noop', 'PUBLISH', '', '{}')"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--done", type=int, help="done events in the table (300,000)")
    parser.add_argument("--full", action="store_true", help="3,000,000 done events")
    args = parser.parse_args()
    done = args.done or (3_000_000 if args.full else 300_000)
    url = fresh_database(common.BENCH_DB)
    import psycopg
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", "eventbus", "0013", verbosity=0)
    connection.close()
    with psycopg.connect(url, autocommit=True) as conn:
        spacing = 3 * 86400 / done
        conn.execute(FILL, ["done", spacing, spacing, done])
        conn.execute(FILL, ["dead", 60.0, 60.0, 300])
        conn.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, new) "
            "SELECT 'bench_noop', 'PUBLISH', '', '{}' FROM generate_series(1, 2000)"
        )
        conn.execute("VACUUM ANALYZE eventbus_event")
        size = conn.execute("SELECT pg_total_relation_size('eventbus_event')").fetchone()[0]

    commits: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                started = time.perf_counter()
                conn.execute(WRITE)
                commits.append(time.perf_counter() - started)

    listener = common.Listener(url, "--processes", "1")
    thread = threading.Thread(target=writer, daemon=True)
    try:
        listener.wait_ready(1, url)
        thread.start()
        time.sleep(2)
        before = len(commits)
        started = time.perf_counter()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # what migrate prints of the move
            call_command("migrate", "eventbus", verbosity=1)
        seconds = time.perf_counter() - started
        said = [line.strip() for line in printed.getvalue().splitlines() if "partitioned" in line]
        during = commits[before:]
        time.sleep(2)
        stop.set()
        thread.join(10)
        common.wait_for(lambda: common.drained(url), 120, 0.1)
    finally:
        stop.set()
        listener.stop()
    window = float(said[-1].split("in a window of ")[1].split(" s")[0]) if said else None
    row: dict[str, Any] = {
        "done_events": done,
        "table_mb": round(size / 1024 / 1024),
        "move_s": round(seconds, 1),
        "window_s": window,
        "writes_during": len(during),
        "longest_commit_s": round(max(during), 3) if during else None,
        "writes_lost": common.count(url, "true") - (done + 300 + 2000 + len(commits)),
    }
    common.report(
        "migrate_storage",
        list(row),
        [row],
        extra={"said": said},
        notes=[*said, "writes_lost: rows written minus rows found after the move (0: none)"],
    )


if __name__ == "__main__":
    main()
