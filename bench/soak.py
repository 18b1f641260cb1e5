"""Soak: a steady write rate for minutes, with a REPEATABLE READ snapshot held in the middle.

A queue table does not fail on day one: every handled event leaves a dead tuple, and a
snapshot that another session holds open (an analytics query, a session left idle in
transaction, a replication slot) stops vacuum from removing them, so the claim walks
ever more dead index entries. This scenario shows what that does to eventbus over time.

Writers (one per 250 events/s, so that each has time to spare: a commit waits for the
disk) commit one bench_noop event per transaction at R events/s (2,000 by default) while
`listen --processes 2` handles them. After `--before` seconds, another session runs
`BEGIN ISOLATION LEVEL REPEATABLE READ`, reads an application table (`--hold-reads
events`: the event table) and stays idle in that transaction for `--hold` seconds, then
rolls back; writing goes on for `--after` seconds more. Every `--interval` seconds it records:
- events written and handled per second; p50 and p99 latency (created_at to finished_at
  of the events finished in the interval, from the event table);
- the runnable backlog, `n_live_tup` and `n_dead_tup` of the event table (the statistics
  lag a second or so), its autovacuum count, and the age of the oldest snapshot's xmin;
- the sizes of the event table, of all its indexes and of the runnable set (the single
  table's runnable index; or the queue slots' tables and indexes), the queue slots' dead
  tuples, and how many queue rotations were seen;
- the claim's duration: the engine's own claim statement (eventbus.sql.claim, the
  listener's scope and batch size, its plan pinned as the workers pin it) timed from here
  in a transaction that is rolled back, median of three; and a writer's commit, mean;
- what may explain a change, on a machine where everything shares two cores and a disk:
  CPU by role (writers, listener, their backends, autovacuum, other processes), how busy
  the disk is, WAL written per second, autovacuum runs and checkpoints.

Storage behaviour needs production settings, and the shared test server runs with
`autovacuum = off`. So the scenario runs on a scratch PostgreSQL cluster that it starts
itself with initdb's defaults (autovacuum on; bench/cluster.py), migrates the site onto
it, and removes it at the end. It writes a CSV and a PNG chart (the held interval shaded)
to docs/soak/LABEL.csv and .png, then prints a table per phase and one JSON line.

    ./run bench soak [--rate 2000] [--before 50] [--hold 60] [--after 90] [--interval 5]
                     [--writers 8] [--batch-size 100] [--hold-reads app|events]
                     [--label latest] [--full]

`--full`: an hour, the snapshot held for 10 minutes in the middle.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import cluster, common
from bench.database import ROOT

INSERT = (
    "WITH e AS (INSERT INTO eventbus_event (channel, operation, table_name, new) "
    "VALUES ('bench_noop', 'PUBLISH', '', '{}') RETURNING id) "
    "SELECT pg_notify('eventbus_bench_noop', '') FROM e"
)
# Events finished in [since, until): the index on finished_at serves it.
FINISHED = (
    "SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY "
    "extract(epoch FROM finished_at - created_at) * 1000) FROM eventbus_event "
    "WHERE state IN ('done', 'dead') AND finished_at >= %s AND finished_at < %s"
)
# The event storage, whatever its layout: a single table (issue 15's "before"), or the
# partitioned one (eventbus.storing), read through pg_partition_tree. "The runnable set"
# is the single table's runnable index, or the queue slots (their heap and indexes).
STORAGE = (
    "WITH leaves AS (SELECT c.oid AS relid, c.relname FROM pg_class AS c "
    "WHERE c.oid IN (SELECT relid FROM pg_partition_tree('eventbus_event') WHERE isleaf) "
    "OR (c.oid = 'eventbus_event'::regclass AND c.relkind = 'r')), "
    "queue AS (SELECT relid FROM leaves WHERE relname LIKE 'eventbus_event_queue_%%'), "
    "stats AS (SELECT s.* FROM pg_stat_user_tables AS s JOIN leaves AS l ON l.relid = s.relid) "
    "SELECT (SELECT count(*) FROM eventbus_event WHERE state IN ('pending', 'failed')), "
    "(SELECT sum(n_live_tup) FROM stats)::bigint, (SELECT sum(n_dead_tup) FROM stats)::bigint, "
    "(SELECT sum(autovacuum_count) FROM stats)::bigint, "
    "(SELECT sum(pg_relation_size(relid)) FROM leaves)::bigint, "
    "(SELECT sum(pg_indexes_size(relid)) FROM leaves)::bigint, "
    "coalesce((SELECT sum(pg_indexes_size(relid)) FROM queue)::bigint, "
    "pg_relation_size(to_regclass('eventbus_event_runnable'))), "
    "(SELECT sum(pg_relation_size(relid)) FROM queue)::bigint, "
    "(SELECT sum(s.n_dead_tup) FROM stats AS s JOIN queue AS q ON q.relid = s.relid)::bigint, "
    "(SELECT array_agg(pg_relation_filenode(relid) ORDER BY relid) FROM queue), "
    "(SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity)"
)
# What the snapshot's session reads first (its snapshot is taken then): an application
# table, as an analytics query or a session left idle in transaction would; or the event
# table itself, whose lock then also stops the queue's rotation (TRUNCATE) while held.
HOLD_READS = {
    "app": "SELECT count(*) FROM auth_user",
    "events": "SELECT id FROM eventbus_event ORDER BY id LIMIT 1",
}
SERVER = (
    "SELECT current_setting('server_version'), current_setting('autovacuum'), "
    "current_setting('fsync'), current_setting('synchronous_commit'), "
    "current_setting('shared_buffers')"
)
CPU_ROLES = (
    "cpu_writers",
    "cpu_writer_backends",
    "cpu_listener",
    "cpu_listener_backends",
    "cpu_autovacuum",
    "cpu_run_other",
    "cpu_others",
)
WRITER_NAME = "soak writer"  # application_name: their backends are told apart by it
LAG = timedelta(seconds=1)  # a mark commits just after its finished_at: count it next time
COLUMNS = (
    "t_s",
    "phase",
    "written_per_s",
    "handled_per_s",
    "p50_ms",
    "p99_ms",
    "claim_ms",
    "commit_ms",
    "backlog",
    "n_live_tup",
    "n_dead_tup",
    "autovacuums",
    "xmin_age",
    "table_mb",
    "indexes_mb",
    "runnable_index_mb",
    "queue_mb",
    "queue_dead_tup",
    "rotations",
    "wal_mb_per_s",
    "checkpoints",
    "load1",
    *CPU_ROLES,
    "disk_busy",
)
MB = 1024 * 1024
# The CPU in the table of phases (all of them are in the CSV and the chart).
PHASE_CPU = ("cpu_writer_backends", "cpu_listener_backends", "cpu_autovacuum", "cpu_others")


@dataclass(frozen=True)
class Plan:
    rate: int
    before: float
    hold: float
    after: float
    interval: float
    batch: int
    writers: int

    @property
    def seconds(self) -> float:
        return self.before + self.hold + self.after

    def phase(self, t: float) -> str:
        if t <= self.before:
            return "before"
        return "held" if t <= self.before + self.hold else "after"


def _writer(
    url: str, rate: float, until: float, start_at: float, written: Any, busy: Any, slot: int
) -> None:
    """Commit one event per transaction at `rate` per second until `until` (shared clock).

    Behind schedule, it writes at once, but it stops at `until` whatever it has written:
    what it managed is the measure. It counts its commits and the time they took."""
    import psycopg

    with psycopg.connect(url, autocommit=True, application_name=WRITER_NAME) as conn:
        i, spent = 0, 0.0
        while True:
            due = start_at + i / rate
            if due >= until or time.time() >= until:
                return
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            started = time.perf_counter()
            conn.execute(INSERT)
            spent += time.perf_counter() - started
            i += 1
            written[slot], busy[slot] = i, int(spent * 1e6)


class DiskBusy:
    """The fraction of time the disk that holds `path` had I/O in flight (/proc/diskstats):
    the writers' commits wait for it, and so do other sessions' on this machine."""

    def __init__(self, path: Path) -> None:
        device = os.stat(path).st_dev
        self.device = (os.major(device), os.minor(device))
        self.last, self.at = self._ticks(), time.monotonic()

    def fraction(self) -> float | None:
        ticks, at = self._ticks(), time.monotonic()
        busy = None if ticks is None or self.last is None else (ticks - self.last) / 1000
        self.last, elapsed, self.at = ticks, at - self.at, at
        return None if busy is None else round(busy / elapsed, 3)

    def _ticks(self) -> int | None:
        for line in Path("/proc/diskstats").read_text().splitlines():
            fields = line.split()
            if (int(fields[0]), int(fields[1])) == self.device:
                return int(fields[12])  # milliseconds spent doing I/O
        return None


class ClaimProbe:
    """The workers' claim statement, timed from outside and rolled back."""

    def __init__(self, url: str, batch: int) -> None:
        import psycopg

        from eventbus import sql
        from eventbus.declaring import registry, wiring

        scope = sql.Scope(  # as eventbus.running.worker.Worker builds it
            channels=wiring.handled_channels(),
            ordered_channels=tuple(registry.ordered_channel_names()),
        )
        self.query, self.params = sql.claim(scope, batch)
        self.pin = sql.PIN_CLAIM_PLAN
        self.conn = psycopg.connect(url, application_name="soak claim probe")

    def milliseconds(self, tries: int = 3) -> float:
        timings = []
        for _ in range(tries):
            with self.conn.cursor() as cursor:
                cursor.execute(self.pin)
                started = time.perf_counter()
                cursor.execute(self.query, self.params)
                cursor.fetchall()
                timings.append((time.perf_counter() - started) * 1000)
            self.conn.rollback()  # the locks it took go back at once
        return statistics.median(timings)

    def close(self) -> None:
        self.conn.close()


class CpuByRole:
    """Where the two cores go, in cores, between two calls.

    Everything shares this machine: the writers, the listener, PostgreSQL and whatever
    other sessions run. Each process's CPU time (/proc) is put down to a role: the
    writers' processes and their server backends, the listener's processes and their
    backends (the claims and the marks run there), autovacuum, the rest of this run
    (the sampler, the server's own processes), and other processes on the machine.
    Backends are told apart by application_name (the engine names its connections
    eventbus-*) and backend_type, from pg_stat_activity."""

    def __init__(self, conn: Any, postmaster: int, listener: int, writers: list[int]) -> None:
        self.conn = conn
        self.postmaster, self.listener, self.writers = postmaster, listener, set(writers)
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.last, self.at = self._times(), time.monotonic()

    def cores(self) -> dict[str, float]:
        roles = self._backends()
        now, at = self._times(), time.monotonic()
        parents = {pid: parent for pid, (parent, _) in now.items()}
        used = dict.fromkeys(CPU_ROLES, 0.0)
        for pid, (_, ticks) in now.items():
            before = self.last.get(pid)
            used[self._role(pid, parents, roles)] += ticks - (before[1] if before else 0)
        elapsed = at - self.at
        self.last, self.at = now, at
        return {role: round(t / self.ticks / elapsed, 3) for role, t in used.items()}

    def _backends(self) -> dict[int, str]:
        rows = self.conn.execute(
            "SELECT pid, application_name, backend_type FROM pg_stat_activity"
        ).fetchall()
        roles = {}
        for pid, name, kind in rows:
            if kind == "autovacuum worker":
                roles[pid] = "cpu_autovacuum"
            elif kind == "client backend" and name == WRITER_NAME:
                roles[pid] = "cpu_writer_backends"
            elif kind == "client backend" and name.startswith("eventbus"):
                roles[pid] = "cpu_listener_backends"
        return roles

    def _role(self, pid: int, parents: dict[int, int], backends: dict[int, str]) -> str:
        if pid in backends:
            return backends[pid]
        if pid in self.writers:
            return "cpu_writers"
        while pid > 1:
            if pid == self.listener:
                return "cpu_listener"
            if pid in (self.postmaster, os.getpid()):
                return "cpu_run_other"
            pid = parents.get(pid, 1)
        return "cpu_others"

    @staticmethod
    def _times() -> dict[int, tuple[int, int]]:
        """Each process's parent and its user + system CPU time in clock ticks."""
        times = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(entry.path, "stat").read_text()
                except OSError:
                    continue  # ended meanwhile
                fields = stat.rsplit(")", 1)[1].split()
                times[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        return times


class Wal:
    """WAL written per second, and the server's checkpoints so far (pg_stat_bgwriter)."""

    QUERY = "SELECT pg_current_wal_lsn(), checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lsn, _ = conn.execute(self.QUERY).fetchone()
        self.at = time.monotonic()

    def sample(self) -> dict[str, Any]:
        lsn, checkpoints = self.conn.execute(self.QUERY).fetchone()
        at = time.monotonic()
        written = self.conn.execute(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [lsn, self.lsn]
        ).fetchone()
        rate = float(written[0]) / MB / (at - self.at)
        self.lsn, self.at = lsn, at
        return {"wal_mb_per_s": round(rate, 2), "checkpoints": checkpoints}


class Storage:
    """The storage's sizes and tuples, and how many queue rotations were seen so far (a
    slot's TRUNCATE gives it a new file: at least one rotation between two samples)."""

    def __init__(self) -> None:
        self.filenodes: list[int] | None = None
        self.rotations = 0

    def sample(self, conn: Any) -> dict[str, Any]:
        (
            backlog,
            live,
            dead,
            vacuums,
            table,
            indexes,
            runnable,
            queue,
            queue_dead,
            filenodes,
            xmin_age,
        ) = conn.execute(STORAGE).fetchone()
        if filenodes and self.filenodes and filenodes != self.filenodes:
            self.rotations += sum(a != b for a, b in zip(filenodes, self.filenodes, strict=False))
        self.filenodes = filenodes
        return {
            "backlog": backlog,
            "n_live_tup": live,
            "n_dead_tup": dead,
            "autovacuums": vacuums,
            "xmin_age": xmin_age,
            "table_mb": round(table / MB, 2),
            "indexes_mb": round(indexes / MB, 2),
            "runnable_index_mb": round(runnable / MB, 3),
            "queue_mb": None if queue is None else round(queue / MB, 3),
            "queue_dead_tup": queue_dead,
            "rotations": self.rotations if filenodes else None,
        }


def _sample(
    conn: Any, storage: Storage, since: datetime, until: datetime, seconds: float
) -> dict[str, Any]:
    handled, percentiles = conn.execute(FINISHED, [since, until]).fetchone()
    p50, p99 = percentiles or (None, None)
    return {
        "handled_per_s": round(handled / seconds, 1),
        "p50_ms": round(p50, 2) if p50 is not None else None,
        "p99_ms": round(p99, 2) if p99 is not None else None,
        **storage.sample(conn),
    }


def soak(
    url: str, plan: Plan, server: cluster.Server, hold_reads: str
) -> tuple[list[dict[str, Any]], dict[str, datetime]]:
    """Run the scenario; the samples, and the server's clock at each phase's start."""
    import psycopg

    writers = plan.writers
    ctx = multiprocessing.get_context("spawn")
    written = ctx.Array("q", writers, lock=False)  # each writer counts in its own slot
    busy = ctx.Array("q", writers, lock=False)  # and the microseconds its commits took
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    probe = ClaimProbe(url, plan.batch)
    listener = common.Listener(url, "--processes", "2", "--batch-size", str(plan.batch))
    procs: list[Any] = []
    holder: psycopg.Connection[Any] | None = None
    samples: list[dict[str, Any]] = []
    try:
        listener.wait_ready(2, url)
        with psycopg.connect(url, autocommit=True, application_name="soak sampler") as conn:

            def now() -> datetime:
                return conn.execute("SELECT clock_timestamp()").fetchone()[0]

            start_at = time.time() + 1.0  # all writers connected first
            until = start_at + plan.seconds + 1.0  # on past the last sample
            procs = [
                ctx.Process(
                    target=_writer,
                    args=(url, plan.rate / writers, until, start_at, written, busy, slot),
                    daemon=True,
                )
                for slot in range(writers)
            ]
            for proc in procs:
                proc.start()
            cpu = CpuByRole(conn, postmaster, listener.process.pid, [p.pid for p in procs])
            disk = DiskBusy(server.data)
            wal = Wal(conn)
            storage = Storage()
            time.sleep(max(0.0, start_at - time.time()))
            marks = {"before": now()}
            since, last_written, last_busy, last_t = marks["before"], 0, 0, 0.0
            hold_at, release_at = plan.before, plan.before + plan.hold
            tick = 1
            while True:
                t = tick * plan.interval
                if "held" not in marks and hold_at < t and plan.hold <= 0:
                    marks["held"] = marks["after"] = now()  # a run with none, to compare
                if "held" not in marks and hold_at < t:
                    _sleep_until(start_at + hold_at)
                    holder = psycopg.connect(url, application_name="soak snapshot")
                    holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                    holder.execute(HOLD_READS[hold_reads]).fetchone()
                    marks["held"] = now()  # idle in transaction from here on
                if holder is not None and release_at < t:
                    _sleep_until(start_at + release_at)
                    holder.rollback()
                    holder.close()
                    holder = None
                    marks["after"] = now()
                if t > plan.seconds + 1e-9:
                    break
                _sleep_until(start_at + t)
                stamp = now() - LAG
                total, spent = sum(written), sum(busy)
                commits = max(1, total - last_written)
                row = {
                    "t_s": round(t, 1),
                    "phase": plan.phase(t),
                    "written_per_s": round((total - last_written) / (t - last_t), 1),
                    **_sample(conn, storage, since, stamp, (stamp - since).total_seconds()),
                    "claim_ms": round(probe.milliseconds(), 3),
                    "commit_ms": round((spent - last_busy) / commits / 1000, 3),
                    **wal.sample(),
                    "load1": round(os.getloadavg()[0], 2),
                    **cpu.cores(),
                    "disk_busy": disk.fraction(),
                }
                samples.append(row)
                print(_line(row), flush=True)
                since, last_written, last_busy, last_t = stamp, total, spent, t
                tick += 1
            for proc in procs:
                proc.join(30)
            marks["end"] = now()
            common.wait_for(lambda: common.drained(url), 120, 0.1)
    finally:
        if holder is not None:
            holder.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        probe.close()
        listener.stop()
    return samples, marks


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['t_s']:>6}s {row['phase']:>6}  handled {row['handled_per_s']:>7}/s  "
        f"p99 {row['p99_ms']} ms  claim {row['claim_ms']} ms  dead {row['n_dead_tup']:,}  "
        f"table {row['table_mb']} MB  runnable index {row['runnable_index_mb']} MB  "
        f"load {row['load1']}, others {row['cpu_others']} cores"
    )


def phases(
    url: str, samples: list[dict[str, Any]], marks: dict[str, datetime]
) -> list[dict[str, Any]]:
    """One row per phase: rates and latency from the event table, the rest from samples."""
    import psycopg

    bounds = [
        ("before", marks["before"], marks["held"]),
        ("held", marks["held"], marks["after"]),
        (
            "after, first 60 s",
            marks["after"],
            min(marks["end"], marks["after"] + timedelta(seconds=60)),
        ),
    ]
    if marks["end"] - marks["after"] > timedelta(seconds=75):
        bounds.append(("after, the rest", marks["after"] + timedelta(seconds=60), marks["end"]))
    rows = []
    with psycopg.connect(url) as conn:
        for name, since, until in bounds:
            if until <= since:
                continue  # no snapshot held (--hold 0)
            seconds = (until - since).total_seconds()
            handled, percentiles = conn.execute(FINISHED, [since, until]).fetchone()
            offset = (since - marks["before"]).total_seconds()
            inside = [
                s for s in samples if offset < s["t_s"] <= offset + seconds + 1e-6
            ] or samples[-1:]
            claims = [s["claim_ms"] for s in inside]
            first = samples.index(inside[0])
            vacuums_before = samples[first - 1]["autovacuums"] if first else 0
            rows.append(
                {
                    "phase": name,
                    "seconds": round(seconds),
                    "written_per_s": round(statistics.mean(s["written_per_s"] for s in inside)),
                    "handled_per_s": round(handled / seconds),
                    "p50_ms": round(percentiles[0], 2) if percentiles else None,
                    "p99_ms": round(percentiles[1], 2) if percentiles else None,
                    "claim_ms_median": round(statistics.median(claims), 2),
                    "claim_ms_max": round(max(claims), 2),
                    "max_dead_tup": max(s["n_dead_tup"] for s in inside),
                    "max_backlog": max(s["backlog"] for s in inside),
                    "table_mb_end": inside[-1]["table_mb"],
                    "indexes_mb_end": inside[-1]["indexes_mb"],
                    "runnable_index_mb_end": inside[-1]["runnable_index_mb"],
                    "max_runnable_index_mb": max(s["runnable_index_mb"] for s in inside),
                    "queue_mb_end": inside[-1]["queue_mb"],
                    "rotations": (inside[-1]["rotations"] or 0)
                    - ((samples[first - 1]["rotations"] or 0) if first else 0),
                    "autovacuums": inside[-1]["autovacuums"] - vacuums_before,
                    **{
                        role: round(statistics.mean(s[role] for s in inside), 2)
                        for role in PHASE_CPU
                    },
                }
            )
    return rows


def write_csv(path: Path, samples: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(samples)


def chart(path: Path, samples: list[dict[str, Any]], plan: Plan, title: str) -> None:
    """All the series over time, one panel each, the held snapshot shaded in every panel,
    and where autovacuum passes over the event table and checkpoints end, marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    t = [s["t_s"] for s in samples]

    def series(name: str, scale: float = 1.0) -> list[float]:
        return [float("nan") if s[name] is None else s[name] * scale for s in samples]

    def steps(name: str) -> list[float]:
        """Sample times by which a counter had gone up (the event ended in that interval)."""
        return [s["t_s"] for prev, s in itertools.pairwise(samples) if s[name] > prev[name]]

    panels: list[tuple[str, list[tuple[str, str]], float]] = [
        ("events/s", [("written_per_s", "written"), ("handled_per_s", "handled")], 1),
        ("latency, ms", [("p50_ms", "p50"), ("p99_ms", "p99")], 1),
        (
            "ms",
            [
                ("claim_ms", "claim statement\n(median of 3)"),
                ("commit_ms", "a writer's commit\n(mean)"),
            ],
            1,
        ),
        ("rows, thousands", [("n_dead_tup", "n_dead_tup"), ("backlog", "runnable backlog")], 1e-3),
        ("MB", [("table_mb", "event table"), ("indexes_mb", "its indexes")], 1),
        (
            "MB",
            [
                ("runnable_index_mb", "runnable index\n(queue slots' indexes)"),
                ("queue_mb", "queue slots' table"),
            ],
            1,
        ),
        (
            "cores; disk",
            [
                ("cpu_writers", "writers"),
                ("cpu_writer_backends", "writers' backends"),
                ("cpu_listener", "listener's processes"),
                ("cpu_listener_backends", "listener's backends"),
                ("cpu_autovacuum", "autovacuum"),
                ("cpu_others", "other processes"),
                ("disk_busy", "disk busy (fraction)"),
            ],
            1,
        ),
    ]
    marks = [
        (steps("autovacuums"), "tab:green", ":", "autovacuum of the table"),
        (steps("checkpoints"), "tab:gray", "--", "checkpoint"),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 12), sharex=True, dpi=72)
    for ax, (label, lines, scale) in zip(axes, panels, strict=True):
        ax.axvspan(plan.before, plan.before + plan.hold, color="tab:red", alpha=0.12, lw=0)
        for times, color, style, _ in marks:
            for x in times:
                ax.axvline(x, color=color, ls=style, lw=1)
        for name, legend in lines:
            ax.plot(t, series(name, scale), lw=1.4, label=legend)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if ax is axes[0]:
            handles.append(plt.Rectangle((0, 0), 1, 1, color="tab:red", alpha=0.12))
            labels.append("snapshot held")
            for _, color, style, legend in marks:
                handles.append(Line2D([], [], color=color, ls=style, lw=1))
                labels.append(legend)
        ax.legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False
        )
    axes[-1].set_ylim(0, os.cpu_count() or 1)  # out of the machine's cores
    axes[-1].set_xlabel("seconds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=2000, help="events/s written")
    parser.add_argument("--before", type=float, help="seconds before the snapshot (50)")
    parser.add_argument("--hold", type=float, help="seconds the snapshot is held (60)")
    parser.add_argument("--after", type=float, help="seconds after it ends (90)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--batch-size", type=int, default=100, help="listen's (its default)")
    parser.add_argument("--writers", type=int, help="writing processes (one per 250 events/s)")
    parser.add_argument(
        "--hold-reads",
        choices=sorted(HOLD_READS),
        default="app",
        help="what the snapshot's session reads: an app table (default) or the event table",
    )
    parser.add_argument("--label", default="latest", help="docs/soak/LABEL.csv and .png")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "soak")
    parser.add_argument("--full", action="store_true", help="an hour, held for 10 minutes")
    args = parser.parse_args()
    before, hold, after = (1500.0, 600.0, 1500.0) if args.full else (50.0, 60.0, 90.0)
    plan = Plan(
        rate=args.rate,
        before=args.before if args.before is not None else before,
        hold=args.hold if args.hold is not None else hold,
        after=args.after if args.after is not None else after,
        interval=args.interval,
        batch=args.batch_size,
        writers=args.writers or max(1, args.rate // 250),
    )
    load_before = os.getloadavg()
    with cluster.scratch_server("soak", common.BENCH_DB) as server:
        url = server.url(common.BENCH_DB)
        os.environ["DATABASE_URL"] = url
        os.environ["EVENTBUS_LISTENER_MODULES"] = "listeners,bench.handlers"  # as the listener's
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        import django
        import psycopg
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        with psycopg.connect(url) as conn:
            version, autovacuum, fsync, commit, buffers = conn.execute(SERVER).fetchone()
        where = (
            f"a scratch PostgreSQL {version} cluster started for this run (initdb's defaults: "
            f"autovacuum = {autovacuum}, fsync = {fsync}, synchronous_commit = {commit}, "
            f"shared_buffers = {buffers})"
        )
        print(f"soak: on {where}", flush=True)
        samples, marks = soak(url, plan, server, args.hold_reads)
        rows = phases(url, samples, marks)
    load_after = os.getloadavg()
    csv_path, png_path = args.out / f"{args.label}.csv", args.out / f"{args.label}.png"
    write_csv(csv_path, samples)
    title = (
        f"eventbus soak ({args.label}): {plan.rate:,} events/s, listen --processes 2, "
        f"REPEATABLE READ snapshot held {plan.hold:.0f} s (it read: {args.hold_reads})\n"
        f"scratch PostgreSQL {version}, autovacuum {autovacuum}; 2-core VM"
    )
    chart(png_path, samples, plan, title)
    common.report(
        "soak",
        [
            "phase",
            "seconds",
            "written_per_s",
            "handled_per_s",
            "p50_ms",
            "p99_ms",
            "claim_ms_median",
            "claim_ms_max",
            "max_dead_tup",
            "max_backlog",
            "table_mb_end",
            "indexes_mb_end",
            "runnable_index_mb_end",
            "max_runnable_index_mb",
            "queue_mb_end",
            "rotations",
            "autovacuums",
            *PHASE_CPU,
        ],
        rows,
        extra={
            "server": where,
            "autovacuum": autovacuum,
            "rate": plan.rate,
            "hold_s": plan.hold,
            "hold_reads": args.hold_reads,
            "batch": plan.batch,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "csv": str(csv_path.relative_to(ROOT) if csv_path.is_relative_to(ROOT) else csv_path),
            "png": str(png_path.relative_to(ROOT) if png_path.is_relative_to(ROOT) else png_path),
        },
        notes=[
            f"server: {where}",
            f"load average (1, 5, 15 min) before: {load_before}, after: {load_after} (2 cores)",
            f"samples: {csv_path}; chart: {png_path}",
        ],
    )


if __name__ == "__main__":
    main()
