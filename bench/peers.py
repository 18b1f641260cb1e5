"""Side by side: the same work on eventbus, Celery (Redis) and procrastinate (PostgreSQL).

Table 1: N comments bulk-created in batches of 1,000 (each batch one transaction), then
one unit of work per comment that inserts one row, on P = 2 worker processes:
- eventbus: `listen --processes 2`, comment_created's handler inserts the row (the trigger
  enqueues in the comment's own INSERT);
- Celery 5 with Redis: one `task.delay(id)` per comment after each commit (what
  `transaction.on_commit` does), `worker -P prefork -c 2`;
- procrastinate 3: one `task.defer(comment_id=id)` per comment after each commit, two
  `procrastinate worker` processes.
Events per second from the first comment written to the last row inserted, measured in
one run. Tables 2 and 3: a local SMTP relay that answers after 50 ms (then 250 ms) per
message, 1,000 comments, one email each: eventbus `--processes 2 --concurrency 32` (40 at
250 ms), Celery's prefork (2, at 50 ms only), threads (32) and gevent (100) pools, and
procrastinate (2 workers, concurrency 32), with each system's worker memory and the most
database connections it held open.

Tuning: every peer keeps its database connection across tasks (one per worker thread or
greenlet; their Django integrations close it around every task by default), and SMTP
connections too, as eventbus does. Each peer is installed in its own virtual environment
under .eventbus/peer-venvs/ (cached). Celery is skipped when Redis does not answer.

    ./run bench peers [--comments 10000] [--emails 1000] [--delay-ms 50 --concurrency 32]
        [--full]
        [--only eventbus celery procrastinate email] [--procrastinate-concurrency 8]
        [--listen-args '--concurrency 32']
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg

from bench import common
from bench.database import ROOT

VENVS = ROOT / ".eventbus" / "peer-venvs"
REQUIREMENTS = {
    "celery": ["celery[redis]>=5.3,<6", "gevent", "psycopg[binary]>=3.1"],
    "procrastinate": ["procrastinate>=3,<4", "psycopg[binary,pool]>=3.1"],
}
PROCRASTINATE_APP = "bench.peer_tasks.procrastinate_app.app"
REDIS = os.environ.get("EVENTBUS_BENCH_REDIS", "127.0.0.1:6379")
PROCESSES = int(os.environ.get("PEERS_PROCESSES", "2"))
ROW_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_peer_row "
    "(id bigserial PRIMARY KEY, comment_id bigint NOT NULL)"
)


def peer_python(name: str) -> Path:
    """The peer's own environment, created on first use (again when its requirements change)."""
    venv = VENVS / name
    stamp = venv / (".installed-" + "-".join(REQUIREMENTS[name]).replace("/", "_")[:120])
    if not stamp.exists():
        print(f"peers: installing {name} into {venv} (first run)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--disable-pip-version-check", *REQUIREMENTS[name]], check=True)
        for old in venv.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return venv / "bin" / "python"


def version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


def redis_command(*parts: str) -> bytes | None:
    """One Redis command over a raw socket; None when Redis does not answer."""
    host, _, port = REDIS.partition(":")
    payload = f"*{len(parts)}\r\n" + "".join(f"${len(p)}\r\n{p}\r\n" for p in parts)
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=2) as s:
            s.sendall(payload.encode())
            return s.recv(64)
    except OSError:
        return None


class Workers:
    """A group of worker processes, each in its own session, stopped with SIGTERM."""

    def __init__(self, commands: list[list[str]], env: dict[str, str]) -> None:
        self.processes = [
            # Their banners go nowhere; warnings and errors still reach stderr.
            subprocess.Popen(
                c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True
            )
            for c in commands
        ]

    def stop(self) -> None:
        for p in self.processes:
            p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


class Bench:
    """The scratch database, the post the comments go to, and one run per system."""

    def __init__(self, url: str) -> None:
        from django.contrib.auth.models import User

        from blog.models import Post

        self.url = url
        alice = User.objects.create_user("alice", email="alice@example.com")
        self.author_id = User.objects.create_user("bob", email="bob@example.com").pk
        self.post_id = Post.objects.create(title="Benchmarks", body="numbers", author=alice).pk
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ROW_TABLE)
        self.run_number = 0

    def reset(self, trigger: bool) -> None:
        """Empty tables; the comment trigger only for eventbus (peers do not pay for it)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("TRUNCATE blog_comment, bench_peer_row, eventbus_event")
            state = "ENABLE" if trigger else "DISABLE"
            conn.execute(f"ALTER TABLE blog_comment {state} TRIGGER USER")
            conn.execute("VACUUM ANALYZE blog_comment, bench_peer_row, eventbus_event")

    def env(self, **extra: str) -> dict[str, str]:
        self.run_number += 1
        return {
            **os.environ,
            "DATABASE_URL": self.url,
            "PEERS_DATABASE_URL": self.url,
            "PEERS_REDIS_URL": f"redis://{REDIS}/0",
            "PEERS_QUEUE": f"{common.BENCH_DB}_peers_{os.getpid()}_{self.run_number}",
            "PYTHONPATH": str(ROOT),
            "PYTHONWARNINGS": "ignore",  # Celery's warnings about root and a Django-less env
            **extra,
        }

    def produce(self, python: Path | str, system: str, task: str, n: int, env: dict) -> float:
        """Write the comments and enqueue; returns the wall-clock time of the first write."""
        out = subprocess.run(
            [
                *(str(python), "-m", "bench.peer_tasks.produce", system, task, str(n)),
                *(str(self.post_id), str(self.author_id)),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            raise RuntimeError(f"{system} producer failed:\n{out.stderr[-3000:]}")
        times = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        return float(times["started"])

    def rows(self) -> int:
        with psycopg.connect(self.url) as conn:
            return int(
                conn.execute(
                    "SELECT count(DISTINCT comment_id) FROM bench_peer_row WHERE comment_id > 0"
                ).fetchone()[0]
            )

    def measure(
        self, start: Any, done: Any, n: int, workers: list[int] | None = None
    ) -> tuple[float, float]:
        """Run the producer (`start()` returns its first write's time); wait for `done()`.

        With `workers` (the root pids of the system's worker processes), `self.usage`
        then holds the most database connections seen open at once and the workers'
        resident memory at the end (MB)."""
        self.usage = Usage()
        started = start()

        def finished() -> bool:
            if workers:
                self.usage.sample(self.url, workers)
            return bool(done())

        try:
            common.wait_for(finished, 900, 0.02)
        finally:
            self.usage.close()
        seconds = time.time() - started
        return n / seconds, seconds


class Usage:
    """Database connections and worker memory, sampled while a system works."""

    INTERVAL = 0.5  # seconds between samples: the relay shares this process's GIL

    def __init__(self) -> None:
        self.connections = 0
        self.memory_mb = 0.0
        self._next = 0.0
        self._conn: psycopg.Connection[Any] | None = None

    def sample(self, url: str, roots: list[int]) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.INTERVAL
        if self._conn is None:
            self._conn = psycopg.connect(url, autocommit=True)
        (n,) = self._conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
        self.connections = max(self.connections, int(n))
        self.memory_mb = max(self.memory_mb, sum(rss_mb(pid) for pid in tree(roots)))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def tree(roots: list[int]) -> list[int]:
    """The processes `roots` and all their descendants (Linux /proc)."""
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            tasks = Path(f"/proc/{pid}/task").iterdir()
            for task in tasks:
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- Table 1: one row per comment ---------------------------------------------------------


BATCH_ISOLATION = '{"comment_created": {"isolation": "batch"}}'


def run_eventbus(bench: Bench, n: int, extra: list[str], channels: str = "") -> tuple[float, float]:
    """`channels`: EVENTBUS_CHANNELS for the listener (a deploy-time isolation)."""
    bench.reset(trigger=True)
    env = bench.env()
    listener = common.Listener(
        bench.url,
        "--processes",
        str(PROCESSES),
        "--channels",
        "comment_created",
        *extra,
        env={"EVENTBUS_LISTENER_MODULES": "bench.peer_handlers", "EVENTBUS_CHANNELS": channels},
    )
    try:
        listener.wait_ready(PROCESSES, bench.url)
        return bench.measure(
            lambda: bench.produce(sys.executable, "eventbus", "insert_row", n, env),
            lambda: bench.rows() >= n,
            n,
        )
    finally:
        listener.stop()


def celery_worker(python: Path, pool: str, concurrency: int, env: dict[str, str]) -> Workers:
    celery = str(python.parent / "celery")
    env = {k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"}
    return Workers(
        [
            [
                *(celery, "-A", "bench.peer_tasks.celery_app", "worker", "-P", pool),
                *("-c", str(concurrency), "-Q", env["PEERS_QUEUE"], "--loglevel", "WARNING"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            ]
        ],
        env,
    )


def run_celery(bench: Bench, n: int) -> tuple[float, float]:
    python = peer_python("celery")
    bench.reset(trigger=False)
    env = bench.env()
    workers = celery_worker(python, "prefork", PROCESSES, env)
    try:
        return bench.measure(
            lambda: bench.produce(python, "celery", "insert_row", n, env),
            lambda: bench.rows() >= n,
            n,
        )
    finally:
        workers.stop()
        redis_command("DEL", env["PEERS_QUEUE"])


def procrastinate_workers(bench: Bench, concurrency: int, env: dict[str, str]) -> Workers:
    """Its schema applied (or its jobs emptied), then two worker processes."""
    cli = str(peer_python("procrastinate").parent / "procrastinate")
    with psycopg.connect(bench.url, autocommit=True) as conn:
        applied = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0]
        if applied:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")
    if not applied:
        subprocess.run([cli, "schema", "--apply"], cwd=ROOT, env=env, check=True)
    command = [cli, "--log-level", "warning", "worker", "--queues", env["PEERS_QUEUE"]]
    return Workers([[*command, "--concurrency", str(concurrency)]] * PROCESSES, env)


def run_procrastinate(bench: Bench, n: int, concurrency: int) -> tuple[float, float]:
    python = peer_python("procrastinate")
    bench.reset(trigger=False)
    env = bench.env(PROCRASTINATE_APP=PROCRASTINATE_APP)
    workers = procrastinate_workers(bench, concurrency, env)
    try:
        return bench.measure(
            lambda: bench.produce(python, "procrastinate", "insert_row", n, env),
            lambda: bench.rows() >= n,
            n,
        )
    finally:
        workers.stop()


# --- Table 2: one email per comment through a slow relay ----------------------------------


def slow_relay(delay: float) -> Any:
    """aiosmtpd that answers each message after `delay` seconds, sessions concurrently."""
    from aiosmtpd.controller import Controller

    from tests.support import Mailbox, SMTPServer

    class SlowMailbox(Mailbox):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            await asyncio.sleep(delay)
            return await super().handle_DATA(server, session, envelope)

    relay = SMTPServer()
    relay.mailbox = SlowMailbox()
    relay._controller = Controller(relay.mailbox, hostname="127.0.0.1", port=relay.port)
    return relay.start()


def run_eventbus_email(bench: Bench, n: int, relay: Any, concurrency: int) -> float:
    bench.reset(trigger=True)
    relay.mailbox.messages.clear()
    env = bench.env()
    listener = common.Listener(
        bench.url,
        "--processes",
        str(PROCESSES),
        "--concurrency",
        str(concurrency),
        env={
            "EVENTBUS_LISTENER_MODULES": "listeners",  # the reference site's email handler
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(relay.port),
        },
    )
    try:
        listener.wait_ready(PROCESSES, bench.url)
        rate, _ = bench.measure(
            lambda: bench.produce(sys.executable, "eventbus", "send_email", n, env),
            lambda: len(relay.mailbox.messages) >= n,
            n,
            workers=[listener.process.pid],
        )
        return rate
    finally:
        listener.stop()


def run_celery_email(bench: Bench, n: int, relay: Any, pool: str, concurrency: int) -> float:
    python = peer_python("celery")
    bench.reset(trigger=False)
    relay.mailbox.messages.clear()
    env = bench.env(PEERS_SMTP_PORT=str(relay.port))
    try:
        return measure_emails(
            bench, python, "celery", n, relay, env, celery_worker(python, pool, concurrency, env)
        )
    finally:
        redis_command("DEL", env["PEERS_QUEUE"])


def run_procrastinate_email(bench: Bench, n: int, relay: Any, concurrency: int) -> float:
    python = peer_python("procrastinate")
    bench.reset(trigger=False)
    relay.mailbox.messages.clear()
    env = bench.env(PROCRASTINATE_APP=PROCRASTINATE_APP, PEERS_SMTP_PORT=str(relay.port))
    workers = procrastinate_workers(bench, concurrency, env)
    return measure_emails(bench, python, "procrastinate", n, relay, env, workers)


def measure_emails(
    bench: Bench,
    python: Path,
    system: str,
    n: int,
    relay: Any,
    env: dict[str, str],
    workers: Workers,
) -> float:
    """A peer's emails per second, from its producer's first write to the relay's last
    message, its workers' memory and connections sampled; the workers stopped after."""
    try:
        rate, _ = bench.measure(
            lambda: bench.produce(python, system, "send_email", n, env),
            lambda: len(relay.mailbox.messages) >= n,
            n,
            workers=[p.pid for p in workers.processes],
        )
        return rate
    finally:
        workers.stop()


# --- Main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comments", type=int, help="table 1 (10,000; --full 100,000)")
    parser.add_argument("--emails", type=int, help="tables 2 and 3 (3,000; --full 10,000)")
    parser.add_argument(
        "--delay-ms",
        type=float,
        help="one relay table at this delay (default: 50 ms and 250 ms)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="eventbus's --concurrency with --delay-ms"
    )
    parser.add_argument(
        "--relay-peers",
        nargs="*",
        default=list(ALL_POOLS),
        help="the peers in the relay tables (none: eventbus alone)",
    )
    parser.add_argument("--full", action="store_true")
    parser.add_argument(
        "--only", nargs="+", default=["eventbus", "celery", "procrastinate", "email"]
    )
    parser.add_argument(
        "--procrastinate-concurrency",
        type=int,
        default=8,  # faster here than 1 (237/s) or 32: sync jobs share a pool of 6 threads
        help="jobs at once per procrastinate worker process (sync tasks run in its threads)",
    )
    parser.add_argument(
        "--listen-args",
        default="",
        help="more arguments for eventbus's `listen` in both tables, e.g. '--concurrency 32'",
    )
    args = parser.parse_args()
    n = args.comments or (100_000 if args.full else 10_000)
    emails = args.emails or (10_000 if args.full else 3_000)
    extra = args.listen_args.split()
    redis_up = redis_command("PING") == b"+PONG\r\n"
    skipped = []
    if not redis_up:
        skipped.append(f"Celery skipped: Redis at {REDIS} does not answer (EVENTBUS_BENCH_REDIS)")
        print(skipped[-1], file=sys.stderr)

    url = common.setup()
    bench = Bench(url)
    listen = " ".join(["--processes 2", *extra])
    rows: list[dict[str, Any]] = []
    results: dict[str, tuple[float, float]] = {}
    if "eventbus" in args.only:
        results["eventbus"] = run_eventbus(bench, n, extra)
        rows.append(_row("eventbus", f"listen {listen}", *results["eventbus"]))
        results["eventbus batch"] = run_eventbus(bench, n, extra, BATCH_ISOLATION)
        rows.append(_row("eventbus", "the same, isolation=batch", *results["eventbus batch"]))
    if "celery" in args.only and redis_up:
        results["celery"] = run_celery(bench, n)
        celery_version = version(peer_python("celery"), "celery")
        rows.append(_row(f"Celery {celery_version}, Redis", "prefork, 2", *results["celery"]))
    if "procrastinate" in args.only:
        c = args.procrastinate_concurrency
        results["procrastinate"] = run_procrastinate(bench, n, c)
        proc_version = version(peer_python("procrastinate"), "procrastinate")
        rows.append(
            _row(
                f"procrastinate {proc_version}",
                f"2 workers, concurrency {c}",
                *results["procrastinate"],
            )
        )
    base = results.get("eventbus", (0.0, 0.0))[0]
    best = max((results[k][0] for k in ("eventbus", "eventbus batch") if k in results), default=0)
    for row in rows:
        row["eventbus_is_x"] = round(base / row["events_per_s"], 1) if base else ""
        row["best_eventbus_is_x"] = round(best / row["events_per_s"], 1) if best else ""
    notes = [
        "Tuned: every peer keeps one database connection per worker thread across tasks",
        "(Celery's Django integration and procrastinate's close it around each task by",
        "default), and its SMTP connection, as eventbus keeps both.",
        "From the first comment written to the last row inserted; peers enqueue one task per",
        "comment after each batch's commit, as transaction.on_commit does.",
        "eventbus_is_x: eventbus (default isolation) over the row; best_eventbus_is_x: the",
        "faster eventbus row over it. isolation=batch: one savepoint per batch, set at",
        "deploy time (EVENTBUS_CHANNELS); a failure reruns that batch's events one by one.",
        *skipped,
    ]
    if rows:
        common.report(
            "peers",
            [
                "system",
                "setting",
                "comments",
                "seconds",
                "events_per_s",
                "eventbus_is_x",
                "best_eventbus_is_x",
            ],
            rows,
            extra={"notes": notes},
            notes=notes,
        )

    if "email" not in args.only:
        return
    for delay_ms, concurrency, peers in relay_runs(args):
        relay_table(bench, emails, delay_ms, concurrency, peers, redis_up, skipped)
    bench.reset(trigger=True)


def relay_runs(args: argparse.Namespace) -> list[tuple[float, int, tuple[str, ...]]]:
    """(delay in ms, eventbus's --concurrency, the peers' pools) for each relay table."""
    pools = tuple(args.relay_peers)
    if args.delay_ms is not None:
        return [(args.delay_ms, args.concurrency, pools)]
    # At 250 ms a 2-process Celery prefork pool sends 8 emails/s: it is left out there.
    return [(50.0, 32, pools), (250.0, 40, tuple(p for p in pools if p != "celery prefork"))]


ALL_POOLS = ("celery prefork", "celery threads", "celery gevent", "procrastinate")
POOL_SIZES = {"prefork": PROCESSES, "threads": 32, "gevent": 100}


def relay_table(
    bench: Bench,
    emails: int,
    delay_ms: float,
    concurrency: int,
    peers: tuple[str, ...],
    redis_up: bool,
    skipped: list[str],
) -> None:
    relay = slow_relay(delay_ms / 1000)
    rows = []
    bound = PROCESSES * concurrency / (delay_ms / 1000)
    try:
        rate = run_eventbus_email(bench, emails, relay, concurrency)
        rows.append(
            _relay_row(
                "eventbus",
                f"--processes {PROCESSES} --concurrency {concurrency}",
                rate,
                bench.usage,
                f"{rate / bound:.2f} of {bound:,.0f}",
            )
        )
        for peer in peers:
            system, _, pool = peer.partition(" ")
            if system == "celery" and redis_up:
                c = POOL_SIZES[pool]
                rate = run_celery_email(bench, emails, relay, pool, c)
                rows.append(_relay_row("Celery", f"{pool}, {c}", rate, bench.usage))
            elif system == "procrastinate":
                rate = run_procrastinate_email(bench, emails, relay, 32)
                rows.append(
                    _relay_row("procrastinate", "2 workers, concurrency 32", rate, bench.usage)
                )
    finally:
        relay.stop()
    base = rows[0]["emails_per_s"]
    for row in rows:
        row["eventbus_is_x"] = round(base / row["emails_per_s"], 1) if row["emails_per_s"] else ""
    common.report(
        f"peers: relay answering after {delay_ms:g} ms, {emails} emails",
        [
            "system",
            "setting",
            "emails_per_s",
            "eventbus_is_x",
            "of_bound",
            "worker_mb",
            "db_connections",
        ],
        rows,
        extra={"emails": emails, "delay_ms": delay_ms},
        notes=[
            "of_bound: eventbus's rate over processes x concurrency / delay;",
            "worker_mb: resident memory of all worker processes; db_connections: the most",
            "open on the database at once while the emails were sent.",
            *skipped,
        ],
    )


def _relay_row(
    system: str, setting: str, rate: float, usage: Usage, of_bound: str = ""
) -> dict[str, Any]:
    return {
        "system": system,
        "setting": setting,
        "emails_per_s": round(rate, 1),
        "of_bound": of_bound,
        "worker_mb": round(usage.memory_mb),
        "db_connections": usage.connections,
    }


def _row(system: str, setting: str, rate: float, seconds: float) -> dict[str, Any]:
    return {
        "system": system,
        "setting": setting,
        "comments": round(rate * seconds),
        "seconds": round(seconds, 2),
        "events_per_s": round(rate),
    }


if __name__ == "__main__":
    main()
