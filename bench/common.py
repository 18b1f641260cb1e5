"""Shared pieces of the benchmarks: a scratch database, listeners, waiting, reporting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench.database import ROOT, fresh_database

# Two people benchmarking on one server would drop each other's database: name your own.
BENCH_DB = os.environ.get("EVENTBUS_BENCH_DATABASE", "eventbus_bench")


def setup() -> str:
    """A fresh, migrated scratch database with Django set up on it; returns its URL."""
    return fresh_database(BENCH_DB)


def write_noop_events(url: str, n: int, batch: int = 10_000, channel: str = "bench_noop") -> None:
    """N events of a trivial channel in batches, each batch one statement and one wake-up."""
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, n, batch):
            size = min(batch, n - start)
            with conn.transaction():
                conn.execute(
                    "INSERT INTO eventbus_event (channel, operation, table_name, new) "
                    "SELECT %s, 'PUBLISH', '', json_build_object('i', g) "
                    "FROM generate_series(1, %s) AS g",
                    [channel, size],
                )
                conn.execute("SELECT pg_notify(%s, '')", [f"eventbus_{channel}"])


def drained(url: str) -> bool:
    """Nothing runnable left: a cheap indexed probe, safe to poll often while measuring."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM eventbus_event WHERE state IN ('pending', 'failed'))"
        ).fetchone()[0]


def count(url: str, where: str = "state = 'done'") -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM eventbus_event WHERE {where}").fetchone()[0])


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Wait until `condition()`; return the time it became true (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark condition not reached in time")
        time.sleep(interval)
    return time.perf_counter()


class Listener:
    def __init__(self, url: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "listen", *args],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": url,
                "EVENTBUS_LOG_LEVEL": "WARNING",  # a log line per event would be measured too
                "EVENTBUS_LISTENER_MODULES": "listeners,bench.handlers",
                **(env or {}),
            },
            start_new_session=True,
        )

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []

    def wait_ready(self, workers: int, url: str) -> None:
        wait_for(lambda: _workers_seen(url) >= workers, 30, 0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def _workers_seen(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT count(*) FROM eventbus_worker").fetchone()[0])


def report(
    scenario: str,
    columns: Sequence[str],
    rows: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> None:
    """Print the figures as a table and `notes`, then one JSON line (with `extra` keys)."""
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns]
    print(f"\n== {scenario} ==")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(_fmt(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))
    for note in notes:
        print(note)
    print(json.dumps({"scenario": scenario, "results": rows, **(extra or {})}))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
