"""Channels split across two databases: one `listen` serving both, against one database.

N bench_noop events (trivial handler, batch 500) drained by `listen --processes P` on one
database, then the same N split in half between two databases on the same server (each
half written by its own writer, at the same time) and drained by one `listen --processes
P --database default b`: P workers per database. Also one database with 2P processes, the
same worker count as the split run. Everything shares this machine's cores, so the split
shows the engine's cost of serving two databases, not the gain of a second server.

    ./run bench databases [--events 100000] [--processes 1] [--full]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common
from bench.database import ROOT, fresh_database

B_DB = f"{common.BENCH_DB}_b"
SETTINGS = {"DJANGO_SETTINGS_MODULE": "bench.two_databases_settings"}
MODULES = {"EVENTBUS_LISTENER_MODULES": "listeners,bench.handlers,bench.handlers_b"}


def _second_database(url_a: str) -> str:
    """Database b, migrated by `manage.py migrate --database b` as an operator would."""
    url_b = fresh_database(B_DB)  # also points DATABASE_URL at it: put it back
    os.environ["DATABASE_URL"] = url_a
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--database", "b", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, **SETTINGS, "BENCH_B_DATABASE_URL": url_b},
        check=True,
    )
    return url_b


def _reset(*urls: str) -> None:
    import psycopg

    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE eventbus_event, eventbus_rollup, eventbus_worker")
            conn.execute("VACUUM ANALYZE eventbus_event")


def drain(
    writes: list[tuple[str, int, str]], args: list[str], env: dict[str, str], workers: int
) -> float:
    """Events/s from the first write to the last event done; `writes`: (url, n, channel)
    each written by its own thread at once."""
    urls = [url for url, _, _ in writes]
    _reset(*urls)
    listener = common.Listener(urls[0], "--batch-size", "500", *args, env=env)
    try:
        for url in urls:
            common.wait_for(lambda u=url: common._workers_seen(u) >= workers, 30, 0.05)
        started = time.perf_counter()
        threads = [
            threading.Thread(target=common.write_noop_events, args=(u, n), kwargs={"channel": c})
            for u, n, c in writes
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished = common.wait_for(lambda: all(common.drained(u) for u in urls), 600, 0.01)
    finally:
        listener.stop()
    return sum(n for _, n, _ in writes) / (finished - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int)
    parser.add_argument("--processes", type=int, default=1, help="workers per database")
    parser.add_argument("--full", action="store_true", help="1,000,000 events per run")
    args = parser.parse_args()
    events = args.events or (1_000_000 if args.full else 100_000)
    p = args.processes
    url_a = common.setup()
    url_b = _second_database(url_a)
    env = {**SETTINGS, **MODULES, "BENCH_B_DATABASE_URL": url_b}
    one = drain(
        [(url_a, events, "bench_noop")], ["--processes", str(p), "--database", "default"], env, p
    )
    one_2p = drain(
        [(url_a, events, "bench_noop")],
        ["--processes", str(2 * p), "--database", "default"],
        env,
        2 * p,
    )
    split = drain(
        [(url_a, events // 2, "bench_noop"), (url_b, events - events // 2, "bench_noop_b")],
        ["--processes", str(p), "--database", "default", "b"],
        env,
        p,
    )
    rows = [
        {"databases": 1, "workers": p, "events": events, "events_per_s": round(one)},
        {"databases": 1, "workers": 2 * p, "events": events, "events_per_s": round(one_2p)},
        {"databases": 2, "workers": 2 * p, "events": events, "events_per_s": round(split)},
    ]
    common.report(
        "databases",
        ["databases", "workers", "events", "events_per_s"],
        rows,
        notes=["both databases on one server, sharing this machine's cores with the workers"],
    )


if __name__ == "__main__":
    main()
