"""Scenario 7: what a claim transaction's subtransaction overflow costs other sessions.

A backend caches 64 subtransaction ids (PGPROC_MAX_CACHED_SUBXIDS). A transaction with
more writing savepoints than that "overflows": while it runs, every snapshot any other
session takes is marked suboverflowed, and checking whether a row's xid was in progress
then means a lookup in pg_subtrans (an SLRU behind one lock) for every row whose xid is
not older than the snapshot's xmin. GitLab's 2021 incident; Samokhvalov, "PostgreSQL
subtransactions considered harmful".

Here: a backlog of N events on `bench_write_row`, whose handler inserts one row in the
event's own savepoint (the default isolation), drained by `listen --processes P
--batch-size 200`. Meanwhile:
- reader threads read K rows of that table in a loop: the newest K (each query checks the
  visibility of K rows the listener just wrote), or with --read spread, K at random among
  all rows written during the run;
- one connection holds an open transaction with an xid for the whole run, so every row
  written during the run is newer than every snapshot's xmin, as with a long report or an
  `idle in transaction` session in the real incidents.
It runs with EVENTBUS_MAX_SAVEPOINTS=0 (no cap: a batch of 200 opens 200 savepoints) and
=64 (the cap), alternated over several rounds, best of the rounds per figure. Whether the
overflow happened is read from the rows themselves (rows per claim transaction) and from
pg_stat_slru (cluster-wide: other sessions on the server add to it).

Beside the readers, `pgbench -S` (its select-only script, 2 clients) runs through each
run, on its own tables in the same database: the TPS of an unrelated read workload, which
every suboverflowed snapshot touches too.

    ./run bench subtransactions [--events 8000] [--processes 1 2] [--readers 3]
        [--read newest|spread] [--window 2000] [--rounds 2] [--no-pgbench] [--full]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg

from bench import common
from bench.handlers import ROW_TABLE_DDL

CHANNEL = "bench_write_row"
SUBXID_CACHE = 64  # PGPROC_MAX_CACHED_SUBXIDS
SETTINGS = (("no cap", "0"), ("cap 64", "64"))  # EVENTBUS_MAX_SAVEPOINTS
READS = {
    # The newest K rows through the primary key, reading each heap row (sum(top_xid)): K
    # visibility checks of rows the listener has just written, the same work every query.
    "newest": "SELECT count(*), sum(top_xid) FROM "
    "(SELECT top_xid FROM bench_row ORDER BY id DESC LIMIT %s) AS newest",
    # K rows at random among all written since the run began: once those span more xids
    # than pg_subtrans keeps in memory (32 pages of 2,048 on PostgreSQL 15, so 65,536
    # events: --full), lookups miss and read pg_subtrans files, as in GitLab's incident.
    "spread": "SELECT count(*), sum(top_xid) FROM bench_row WHERE id = ANY(ARRAY("
    "SELECT 1 + (random() * (SELECT max(id) - 1 FROM bench_row))::bigint "
    "FROM generate_series(1, %s)))",
}
SUBTRANS_SLRU = (
    "SELECT coalesce(sum(blks_hit), 0), coalesce(sum(blks_read), 0) FROM pg_stat_slru "
    "WHERE lower(name) IN ('subtrans', 'subtransaction')"  # PostgreSQL 13-16, 17+
)
MAX_PER_TRANSACTION = (
    "SELECT coalesce(max(n), 0) FROM "
    "(SELECT count(*) AS n FROM bench_row WHERE event_id > 0 GROUP BY top_xid) AS per_tx"
)


@dataclass
class Run:
    events_per_s: float
    reader_qps: float
    reader_p99_ms: float
    max_savepoints_per_tx: int  # writing savepoints seen in one claim transaction
    slru_hit: int  # pg_stat_slru Subtrans deltas over the run
    slru_read: int
    pgbench_tps: float  # pgbench -S through the run (0: not run)


class Readers:
    """Threads running one of READS in a loop; psycopg releases the GIL while the server works."""

    def __init__(self, url: str, count: int, read: str, window: int) -> None:
        self.stop = threading.Event()
        self.samples: list[list[tuple[float, float]]] = [[] for _ in range(count)]
        self.threads = [
            threading.Thread(target=self._loop, args=(url, read, window, s), daemon=True)
            for s in self.samples
        ]
        for t in self.threads:
            t.start()

    def _loop(self, url: str, read: str, window: int, samples: list[tuple[float, float]]) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            # The same plan on both sides whatever the statistics say: index scans.
            conn.execute("SET enable_seqscan = off")
            conn.execute("SET enable_bitmapscan = off")
            while not self.stop.is_set():
                started = time.perf_counter()
                conn.execute(READS[read], [window]).fetchone()
                ended = time.perf_counter()
                samples.append((ended, ended - started))

    def finish(self, since: float, until: float) -> tuple[float, float]:
        """Stop; queries per second and p99 latency (ms) of the queries ended in the window."""
        self.stop.set()
        for t in self.threads:
            t.join()
        latencies = sorted(lat for s in self.samples for end, lat in s if since <= end <= until)
        if not latencies:
            return 0.0, 0.0
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        return len(latencies) / (until - since), p99 * 1000


def _pgbench() -> str | None:
    """pgbench from PATH or Debian's PostgreSQL directories."""
    found = shutil.which("pgbench")
    if found:
        return found
    versions = (
        sorted(os.listdir("/usr/lib/postgresql"), reverse=True)
        if os.path.isdir("/usr/lib/postgresql")
        else []
    )
    for version in versions:
        path = f"/usr/lib/postgresql/{version}/bin/pgbench"
        if os.access(path, os.X_OK):
            return path
    return None


class PgBench:
    """`pgbench -S` in the background for the length of a run; its TPS at the end."""

    def __init__(self, binary: str, url: str) -> None:
        self.process = subprocess.Popen(
            [binary, "-n", "-S", "-c", "2", "-j", "2", "-T", "3600", "-P", "1", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self) -> float:
        """Stop it; the mean of its per-second progress lines."""
        self.process.terminate()
        _, err = self.process.communicate(timeout=30)
        rates = [float(m) for m in re.findall(r"progress: [\d.]+ s, ([\d.]+) tps", err)]
        return sum(rates) / len(rates) if rates else 0.0


def _pgbench_init(binary: str, url: str) -> None:
    subprocess.run([binary, "-i", "-q", "-s", "1", url], check=True, capture_output=True)


def _subtrans_slru(url: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        hit, read = conn.execute(SUBTRANS_SLRU).fetchone()
        return int(hit), int(read)


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ROW_TABLE_DDL)
        conn.execute("TRUNCATE eventbus_event, bench_row")
        conn.execute("VACUUM ANALYZE eventbus_event")
        conn.execute("VACUUM ANALYZE bench_row")


def one_run(url: str, cap: str, events: int, processes: int, batch: int, args: Any) -> Run:
    _reset(url)
    listener = common.Listener(
        url,
        "--processes",
        str(processes),
        "--batch-size",
        str(batch),
        env={"EVENTBUS_MAX_SAVEPOINTS": cap},
    )
    holder = psycopg.connect(url)  # not autocommit: its transaction stays open
    readers = None
    pgbench = None
    tps = 0.0
    try:
        listener.wait_ready(processes, url)
        holder.execute("SELECT txid_current()")  # an xid: every later snapshot's xmin <= it
        with psycopg.connect(url, autocommit=True) as conn:  # a full window from the start
            conn.execute(
                "INSERT INTO bench_row (event_id) SELECT 0 FROM generate_series(1, %s)",
                [args.window],
            )
        slru_before = _subtrans_slru(url)
        readers = Readers(url, args.readers, args.read, args.window)
        if args.pgbench_binary:
            pgbench = PgBench(args.pgbench_binary, url)
        time.sleep(0.2)  # connected and reading
        started = time.perf_counter()
        common.write_noop_events(url, events, channel=CHANNEL)
        finished = common.wait_for(lambda: common.drained(url), 600, 0.01)
        qps, p99 = readers.finish(started, finished)
        readers = None
        if pgbench is not None:
            tps, pgbench = pgbench.finish(), None
    finally:
        if readers is not None:
            readers.stop.set()
        if pgbench is not None:
            pgbench.process.kill()
        holder.close()
        listener.stop()
    time.sleep(1.2)  # backends flush their SLRU counters at most once a second, and on exit
    slru_after = _subtrans_slru(url)
    with psycopg.connect(url) as conn:
        most = int(conn.execute(MAX_PER_TRANSACTION).fetchone()[0])
    return Run(
        events / (finished - started),
        qps,
        p99,
        most,
        slru_after[0] - slru_before[0],
        slru_after[1] - slru_before[1],
        tps,
    )


def _best(runs: list[Run]) -> Run:
    """Best of the rounds per figure: load drift only ever makes a figure worse."""
    return Run(
        max(r.events_per_s for r in runs),
        max(r.reader_qps for r in runs),
        min(r.reader_p99_ms for r in runs),
        max(r.max_savepoints_per_tx for r in runs),
        min(r.slru_hit for r in runs),
        min(r.slru_read for r in runs),
        max(r.pgbench_tps for r in runs),
    )


def _server(url: str) -> str:
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 5432}" if parts.hostname else "a unix socket"
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    return f"PostgreSQL {version} at {where}"


def _cap_supported() -> bool:
    from eventbus import conf

    return "MAX_SAVEPOINTS" in {f.name for f in fields(conf.Settings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, help="events per run (8,000; --full 100,000)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--readers", type=int, default=3, help="reader connections")
    parser.add_argument("--read", choices=sorted(READS), default="newest", help="see READS")
    parser.add_argument("--window", type=int, default=2000, help="rows each read checks")
    parser.add_argument("--rounds", type=int, help="runs per setting, alternated (2; --full 3)")
    parser.add_argument("--no-pgbench", action="store_true", help="no pgbench -S beside")
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    events = args.events or (100_000 if args.full else 8_000)
    rounds = args.rounds or (3 if args.full else 2)
    url = common.setup()
    server = _server(url)
    args.pgbench_binary = None if args.no_pgbench else _pgbench()
    if args.pgbench_binary:
        _pgbench_init(args.pgbench_binary, url)
    elif not args.no_pgbench:
        print("note: no pgbench on this machine: its column stays 0")
    print(
        f"server: {server}; {args.readers} readers ({args.read}, {args.window} rows a query); "
        "each run holds one transaction with an xid open throughout"
    )
    if not _cap_supported():
        print("note: this tree has no EVENTBUS_MAX_SAVEPOINTS yet: both settings run uncapped")
    rows: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, float]] = {}
    for processes in args.processes:
        runs: dict[str, list[Run]] = {label: [] for label, _ in SETTINGS}
        for i in range(rounds):
            order = SETTINGS if i % 2 == 0 else SETTINGS[::-1]  # neither side always goes first
            for label, cap in order:
                runs[label].append(one_run(url, cap, events, processes, args.batch_size, args))
        best = {label: _best(r) for label, r in runs.items()}
        for label, cap in SETTINGS:
            b = best[label]
            rows.append(
                {
                    "processes": processes,
                    "max_savepoints": f"{cap} ({label})",
                    "events": events,
                    "batch": args.batch_size,
                    "events_per_s": round(b.events_per_s),
                    "reader_qps": round(b.reader_qps, 1),
                    "reader_p99_ms": round(b.reader_p99_ms, 2),
                    "most_per_tx": b.max_savepoints_per_tx,
                    "overflowed": "yes" if b.max_savepoints_per_tx > SUBXID_CACHE else "no",
                    "subtrans_hit": b.slru_hit,
                    "subtrans_read": b.slru_read,
                    "pgbench_S_tps": round(b.pgbench_tps),
                }
            )
        capped, uncapped = best["cap 64"], best["no cap"]
        ratios[str(processes)] = {
            "events_per_s": round(capped.events_per_s / uncapped.events_per_s, 2),
            "reader_qps": round(capped.reader_qps / max(uncapped.reader_qps, 1e-9), 2),
            "reader_p99": round(capped.reader_p99_ms / max(uncapped.reader_p99_ms, 1e-9), 2),
            "pgbench_tps": round(capped.pgbench_tps / max(uncapped.pgbench_tps, 1e-9), 2),
        }
    common.report(
        "subtransactions",
        [
            "processes",
            "max_savepoints",
            "events",
            "batch",
            "events_per_s",
            "reader_qps",
            "reader_p99_ms",
            "most_per_tx",
            "overflowed",
            "subtrans_hit",
            "subtrans_read",
            "pgbench_S_tps",
        ],
        rows,
        extra={
            "server": server,
            "readers": args.readers,
            "read": args.read,
            "window": args.window,
            "rounds": rounds,
            "ratios_cap_over_no_cap": ratios,
        },
        notes=[
            f"cap 64 / no cap, {p} process(es): events/s {r['events_per_s']}x, "
            f"reader q/s {r['reader_qps']}x, reader p99 {r['reader_p99']}x, "
            f"pgbench -S TPS {r['pgbench_tps']}x"
            for p, r in ratios.items()
        ],
    )


if __name__ == "__main__":
    main()
