"""Where a claim transaction's time goes: the engine's phases against the plain ceiling's.

One process, in-process (no listener): N bench_noop events (trivial handler,
`isolation="batch"`) are drained by the real executor in batches, each phase timed per
batch (the claim with its fetch, building the events, the crash ledger's round trip,
the handlers, the mark, the commit); then the same events by the ceiling's plain
claim-and-mark loop (bench/throughput.py), timed the same way. It answers "what bounds
the fraction of the ceiling", and shows what a change to one phase bought.

    ./run bench batch_phases [--events 100000] [--batch-size 500] [--rounds 2] [--full]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("EVENTBUS_LOG_LEVEL", "WARNING")  # a line per event would be timed too
os.environ.setdefault("EVENTBUS_LISTENER_MODULES", "listeners,bench.handlers")

from bench import common
from bench.throughput import CEILING_CLAIM, CEILING_MARK, PIN_PLAN, _reset

PHASES = ("claim", "events", "ledger", "handlers", "mark", "commit", "other")


def _timed(owner: Any, name: str, phase: str, spent: dict[str, float]) -> Callable[[], None]:
    """Wrap owner.name to add its time to spent[phase]; returns what undoes it."""
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[phase] += time.perf_counter() - started

    setattr(owner, name, timed)
    return lambda: setattr(owner, name, original)


def engine(url: str, events: int, batch: int) -> dict[str, float]:
    """Milliseconds per batch in each phase, and events/s, for the real executor."""
    from django.db.backends.base import base

    from eventbus.running import executor as executing
    from eventbus.running import ledger
    from eventbus.running.worker import Worker, WorkerOptions

    _reset(url)
    common.write_noop_events(url, events)
    worker = Worker(WorkerOptions(channels=None, batch_size=batch, poll_interval=1.0))
    spent: dict[str, float] = collections.defaultdict(float)
    undo = [
        _timed(executing.Executor, "_claim_rows", "claim", spent),
        _timed(executing, "from_row", "events", spent),  # per row: 0.1 µs of its own
        _timed(ledger.CrashLedger, "started", "ledger", spent),
        _timed(executing.Executor, "_handle_all", "handlers", spent),
        _timed(executing.Executor, "_mark", "mark", spent),
        _timed(base.BaseDatabaseWrapper, "commit", "commit", spent),
    ]
    try:
        done = 0
        started = time.perf_counter()
        while outcomes := worker.executor.run_batch(worker.scope, batch):
            done += len(outcomes)
        elapsed = time.perf_counter() - started
    finally:
        for restore in undo:
            restore()
        worker.executor.close()
    return _per_batch(spent, elapsed, done, batch)


def ceiling(url: str, events: int, batch: int) -> dict[str, float]:
    """The same for the ceiling's loop: claim ids, mark them, commit."""
    import psycopg

    _reset(url)
    common.write_noop_events(url, events)
    spent: dict[str, float] = collections.defaultdict(float)
    done = 0
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        while True:
            with conn.transaction():
                t = time.perf_counter()
                conn.execute(PIN_PLAN)
                ids = [r[0] for r in conn.execute(CEILING_CLAIM, [batch]).fetchall()]
                spent["claim"] += time.perf_counter() - t
                if ids:
                    t = time.perf_counter()
                    conn.execute(CEILING_MARK, [ids], prepare=False)
                    spent["mark"] += time.perf_counter() - t
                t = time.perf_counter()
            spent["commit"] += time.perf_counter() - t
            if not ids:
                break
            done += len(ids)
    return _per_batch(spent, time.perf_counter() - started, done, batch)


def _per_batch(spent: dict[str, float], elapsed: float, done: int, batch: int) -> dict[str, float]:
    batches = max(done / batch, 1)
    row = {phase: spent.get(phase, 0.0) * 1000 / batches for phase in PHASES[:-1]}
    total = elapsed * 1000 / batches
    row["other"] = max(total - sum(row.values()), 0.0)
    row["total"] = total
    row["per_s"] = done / elapsed
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int)
    parser.add_argument("--full", action="store_true", help="1,000,000 events per run")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2, help="best round of each kept")
    args = parser.parse_args()
    events = args.events or (1_000_000 if args.full else 100_000)
    url = common.setup()
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):  # alternated: drift falls on both
        for name, run in (("eventbus", engine), ("ceiling", ceiling)):
            row = run(url, events, args.batch_size)
            if name not in best or row["per_s"] > best[name]["per_s"]:
                best[name] = row
    rows = [
        {
            "loop": name,
            **{k: round(v, 2) for k, v in row.items() if k != "per_s"},
            "events_per_s": round(row["per_s"]),
        }
        for name, row in best.items()
    ]
    fraction = best["eventbus"]["per_s"] / best["ceiling"]["per_s"]
    common.report(
        "batch_phases",
        ["loop", *PHASES, "total", "events_per_s"],
        rows,
        extra={"fraction": round(fraction, 2), "batch": args.batch_size},
        notes=[
            f"milliseconds per batch of {args.batch_size}, one process; "
            f"eventbus at {fraction:.2f} of the ceiling in this loop"
        ],
    )


if __name__ == "__main__":
    main()
