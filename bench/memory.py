"""Scenario 5: a worker's resident memory at the start and after many events.

Two runs:
- many small events (`--events`, batch 500): growth over a long run, i.e. leaks;
- 1 MB payloads (`--large`, the default batch of 100): the peak a batch costs. Each claimed
  event holds its payload as text and as decoded JSON, so without a payload budget a batch
  of 100 holds hundreds of MB; EVENTBUS_PAYLOAD_BUDGET (64 MiB by default) should keep the
  peak near that budget over the baseline.

./run bench memory [--events 200000] [--large 300] [--full: 1,000,000 and 1,000]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg

from bench import common

LARGE_BYTES = 1_000_000
# A 1 MB string in a JSON payload, each event's its own (md5 of the id, repeated).
WRITE_LARGE = (
    "INSERT INTO eventbus_event (channel, operation, table_name, new) "
    "SELECT 'bench_noop', 'PUBLISH', '', json_build_object('i', g, 'body', "
    "repeat(md5(g::text), %s)) FROM generate_series(1, %s) AS g"
)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (the peak since the process started) of `pid`, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def _warm_worker(url: str, listener: common.Listener) -> int:
    """Imports, caches and the first batches done; the worker's pid."""
    listener.wait_ready(1, url)
    common.write_noop_events(url, 1000)
    common.wait_for(lambda: common.count(url) >= 1000, 60)
    [worker] = listener.worker_pids()
    return worker


def small_events(url: str, events: int) -> dict[str, Any]:
    listener = common.Listener(url, "--processes", "1", "--batch-size", "500")
    try:
        worker = _warm_worker(url, listener)
        start = rss_mb(worker)
        common.write_noop_events(url, events)
        common.wait_for(lambda: common.count(url) >= events + 1000, 1200, 0.2)
        end, peak = rss_mb(worker), rss_mb(worker, "VmHWM")
    finally:
        listener.stop()
    return _row(f"{events:,} small", 500, start, end, peak)


def large_events(url: str, events: int, batch: int = 100) -> dict[str, Any]:
    """`events` events of 1 MB each, written as one backlog, then drained."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE eventbus_event")
    listener = common.Listener(url, "--processes", "1", "--batch-size", str(batch))
    try:
        worker = _warm_worker(url, listener)
        start = rss_mb(worker)
        with psycopg.connect(url, autocommit=True) as conn:
            # A transaction per batch: each claim finds a full batch, and the writer stays small.
            for done in range(0, events, batch):
                with conn.transaction():
                    conn.execute(WRITE_LARGE, [LARGE_BYTES // 32, min(batch, events - done)])
                    conn.execute("SELECT pg_notify('eventbus_bench_noop', '')")
        common.wait_for(lambda: common.count(url) >= events + 1000, 1200, 0.2)
        end, peak = rss_mb(worker), rss_mb(worker, "VmHWM")
    finally:
        listener.stop()
    return _row(f"{events:,} of 1 MB", batch, start, end, peak)


def _row(events: str, batch: int, start: float, end: float, peak: float) -> dict[str, Any]:
    return {
        "events": events,
        "batch": batch,
        "rss_start_mb": round(start, 1),
        "rss_end_mb": round(end, 1),
        "growth_mb": round(end - start, 1),
        "rss_peak_mb": round(peak, 1),
        "peak_over_start_mb": round(peak - start, 1),
    }


def _budget() -> str:
    """The payload budget the listener runs with, or why there is none."""
    from eventbus import conf

    if "PAYLOAD_BUDGET" not in {f.name for f in fields(conf.Settings)}:
        return "none (this tree has no EVENTBUS_PAYLOAD_BUDGET yet)"
    return f"{conf.get().PAYLOAD_BUDGET / 2**20:g} MiB"  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, help="small events (200,000; --full 1,000,000)")
    parser.add_argument("--large", type=int, help="1 MB events (300; --full 1,000); 0: skip")
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    events = args.events or (1_000_000 if args.full else 200_000)
    large = args.large if args.large is not None else (1_000 if args.full else 300)
    url = common.setup()
    rows = [small_events(url, events)]
    if large:
        rows.append(large_events(url, large))
    common.report(
        "memory",
        [
            "events",
            "batch",
            "rss_start_mb",
            "rss_end_mb",
            "growth_mb",
            "rss_peak_mb",
            "peak_over_start_mb",
        ],
        rows,
        extra={"payload_budget": _budget()},
        notes=[f"payload budget: {_budget()}; rss_peak is the worker's VmHWM over its life"],
    )


if __name__ == "__main__":
    main()
