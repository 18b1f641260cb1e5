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
one run. Table 2: a local SMTP relay that answers after 50 ms per message, 500 comments,
one email each: eventbus `--processes 2` and Celery's prefork (2), threads (32) and gevent
(100) pools.

Tuning: every peer keeps its database connection across tasks (one per worker thread or
greenlet; their Django integrations close it around every task by default), and SMTP
connections too, as eventbus does. Each peer is installed in its own virtual environment
under .eventbus/peer-venvs/ (cached). Celery is skipped when Redis does not answer.

    ./run bench peers [--comments 10000] [--emails 500] [--delay-ms 50] [--full]
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
REDIS = os.environ.get("EVENTBUS_BENCH_REDIS", "127.0.0.1:6379")
PROCESSES = 2
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

    def measure(self, start: Any, done: Any, n: int) -> tuple[float, float]:
        """Run the producer (`start()` returns its first write's time); wait for `done()`."""
        started = start()
        common.wait_for(done, 900, 0.02)
        seconds = time.time() - started
        return n / seconds, seconds


# --- Table 1: one row per comment ---------------------------------------------------------


def run_eventbus(bench: Bench, n: int, extra: list[str]) -> tuple[float, float]:
    bench.reset(trigger=True)
    env = bench.env()
    listener = common.Listener(
        bench.url,
        "--processes",
        str(PROCESSES),
        "--channels",
        "comment_created",
        *extra,
        env={"EVENTBUS_LISTENER_MODULES": "bench.peer_handlers"},
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


def run_procrastinate(bench: Bench, n: int, concurrency: int) -> tuple[float, float]:
    python = peer_python("procrastinate")
    bench.reset(trigger=False)
    env = bench.env(PROCRASTINATE_APP="bench.peer_tasks.procrastinate_app.app")
    cli = str(python.parent / "procrastinate")
    with psycopg.connect(bench.url, autocommit=True) as conn:
        applied = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0]
        if applied:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")
    if not applied:
        subprocess.run([cli, "schema", "--apply"], cwd=ROOT, env=env, check=True)
    command = [cli, "--log-level", "warning", "worker", "--queues", env["PEERS_QUEUE"]]
    workers = Workers([[*command, "--concurrency", str(concurrency)]] * PROCESSES, env)
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


def run_eventbus_email(bench: Bench, n: int, relay: Any, extra: list[str]) -> float:
    bench.reset(trigger=True)
    relay.mailbox.messages.clear()
    env = bench.env()
    listener = common.Listener(
        bench.url,
        "--processes",
        str(PROCESSES),
        *extra,
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
        )
        return rate
    finally:
        listener.stop()


def run_celery_email(bench: Bench, n: int, relay: Any, pool: str, concurrency: int) -> float:
    python = peer_python("celery")
    bench.reset(trigger=False)
    relay.mailbox.messages.clear()
    env = bench.env(PEERS_SMTP_PORT=str(relay.port))
    workers = celery_worker(python, pool, concurrency, env)
    try:
        rate, _ = bench.measure(
            lambda: bench.produce(python, "celery", "send_email", n, env),
            lambda: len(relay.mailbox.messages) >= n,
            n,
        )
        return rate
    finally:
        workers.stop()
        redis_command("DEL", env["PEERS_QUEUE"])


# --- Main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comments", type=int, help="table 1 (10,000; --full 100,000)")
    parser.add_argument("--emails", type=int, help="table 2 (500; --full 2,000)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="the relay's delay")
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
    emails = args.emails or (2_000 if args.full else 500)
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
    for row in rows:
        row["eventbus_is_x"] = round(base / row["events_per_s"], 1) if base else ""
    notes = [
        "Tuned: every peer keeps one database connection per worker thread across tasks",
        "(Celery's Django integration and procrastinate's close it around each task by",
        "default), and its SMTP connection, as eventbus keeps both.",
        "From the first comment written to the last row inserted; peers enqueue one task per",
        "comment after each batch's commit, as transaction.on_commit does.",
        *skipped,
    ]
    common.report(
        "peers",
        ["system", "setting", "comments", "seconds", "events_per_s", "eventbus_is_x"],
        rows,
        extra={"notes": notes},
        notes=notes,
    )

    if "email" not in args.only:
        return
    relay = slow_relay(args.delay_ms / 1000)
    mail_rows = []
    try:
        rate = run_eventbus_email(bench, emails, relay, extra)
        mail_rows.append(
            {"system": "eventbus", "setting": f"listen {listen}", "emails_per_s": rate}
        )
        if redis_up:
            for pool, c in (("prefork", 2), ("threads", 32), ("gevent", 100)):
                rate = run_celery_email(bench, emails, relay, pool, c)
                mail_rows.append(
                    {"system": "Celery", "setting": f"{pool}, {c}", "emails_per_s": rate}
                )
    finally:
        relay.stop()
        bench.reset(trigger=True)
    for row in mail_rows:
        row["emails_per_s"] = round(row["emails_per_s"], 1)
    common.report(
        f"peers: relay answering after {args.delay_ms:g} ms, {emails} emails",
        ["system", "setting", "emails_per_s"],
        mail_rows,
        extra={"emails": emails, "delay_ms": args.delay_ms},
        notes=[*skipped] if skipped else (),
    )


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
