"""Scenario 5: a worker's resident memory at the start and after many events.

./run bench memory [--events 200000] [--full: 1,000,000]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    events = args.events or (1_000_000 if args.full else 200_000)
    url = common.setup()
    listener = common.Listener(url, "--processes", "1", "--batch-size", "500")
    try:
        listener.wait_ready(1, url)
        common.write_noop_events(url, 1000)  # warm up: imports, caches, first batches
        common.wait_for(lambda: common.count(url) >= 1000, 60)
        [worker] = listener.worker_pids()
        start = rss_mb(worker)
        common.write_noop_events(url, events)
        common.wait_for(lambda: common.count(url) >= events + 1000, 1200, 0.2)
        end = rss_mb(worker)
    finally:
        listener.stop()
    common.report(
        "memory",
        ["events", "rss_start_mb", "rss_end_mb", "growth_mb"],
        [
            {
                "events": events,
                "rss_start_mb": round(start, 1),
                "rss_end_mb": round(end, 1),
                "growth_mb": round(end - start, 1),
            }
        ],
    )


if __name__ == "__main__":
    main()
