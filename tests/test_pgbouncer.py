"""Behind PgBouncer's transaction pooling: claims go through the pool, LISTEN goes direct.

A real PgBouncer (the Debian package; skipped where it is not installed) pools the test
database in transaction mode. The listener's DATABASE_URL points at it and
EVENTBUS_LISTEN_DATABASE_URL at PostgreSQL itself. With a 60 s poll interval, events
written after the start are handled within seconds only if the wake-ups arrive.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection

from blog.models import Post
from eventbus.models import EventRecord
from tests.support import Listener, database_url, free_port, wait_until

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(PGBOUNCER), reason="pgbouncer is not installed"),
]


@pytest.fixture
def pgbouncer() -> Iterator[str]:
    """A PgBouncer in transaction-pooling mode in front of the test server; its URL."""
    settings = connection.settings_dict
    user = settings["USER"] or "root"
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="eventbus-pgbouncer-"))
    directory.chmod(0o777)  # pgbouncer drops root for another user
    # The server: by TCP, or by the socket directory the test database uses (embedded).
    host = settings["HOST"] or (settings.get("OPTIONS") or {}).get("host") or "127.0.0.1"
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={settings['PORT'] or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        f"admin_users = {user}\npool_mode = transaction\ndefault_pool_size = 4\n"
        f"logfile = {directory / 'pgbouncer.log'}\npidfile = {directory / 'pgbouncer.pid'}\n"
    )
    for path in directory.iterdir():
        path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IWOTH)
    command = [PGBOUNCER, str(config)]
    if os.geteuid() == 0:
        # It refuses to run as root: run as the socket directory's owner, else 'postgres'.
        command[1:1] = ["-u", Path(host).owner() if host.startswith("/") else "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = urlunsplit(urlsplit(database_url())._replace(netloc=f"{user}@127.0.0.1:{port}", query=""))

    def answers() -> bool:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    try:
        wait_until(answers, timeout=15, what="pgbouncer to accept connections")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def admin_console(pgbouncer_url: str, command: str) -> list[dict[str, Any]]:
    """Rows of PgBouncer's SHOW `command` about the test database."""
    admin = urlunsplit(urlsplit(pgbouncer_url)._replace(path="/pgbouncer"))
    with psycopg.connect(admin, autocommit=True) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        cursor.execute(f"SHOW {command}")
        name = connection.settings_dict["NAME"]
        return [row for row in cursor.fetchall() if row["database"] == name]


def pooled_transactions(pgbouncer_url: str) -> int:
    """Transactions PgBouncer has passed to the test database."""
    return sum(int(row["total_xact_count"]) for row in admin_console(pgbouncer_url, "STATS"))


def test_claims_through_transaction_pooling_with_a_direct_listen_connection(
    pgbouncer: str, author: User, start_listener: Callable[..., Listener]
) -> None:
    start_listener(
        "--channels",
        "post_created",
        "--poll-interval",
        "60",
        env_extra={"DATABASE_URL": pgbouncer, "EVENTBUS_LISTEN_DATABASE_URL": database_url()},
        workers=1,
    )
    before = pooled_transactions(pgbouncer)
    for i in range(20):
        Post.objects.create(title=f"pooled {i}", body="a b c d", author=author)

    wait_until(
        lambda: EventRecord.objects.filter(channel="post_created", state="done").count() == 20,
        timeout=20,
        what="the posts handled after their wake-ups (the poll is 60 s away)",
    )
    assert set(Post.objects.values_list("word_count", flat=True)) == {4}
    assert pooled_transactions(pgbouncer) > before, "the claims went through the pool"
    # The worker's pooled connection is its claim connection; its LISTEN connection and
    # its crash ledger's (written while a claim holds a server connection) go direct.
    clients = admin_console(pgbouncer, "CLIENTS")
    assert len(clients) == 1
    names = {c.get("application_name") for c in clients}
    assert not names & {"eventbus-listen", "eventbus-ledger"}, names


def test_handler_slots_share_a_smaller_pool_of_server_connections(
    pgbouncer: str, author: User, start_listener: Callable[..., Listener]
) -> None:
    """8 handler slots through a pool of 4 server connections: a slot holds one only while
    its claim transaction is open, so every event is handled, and the pool never opens a
    fifth; the LISTEN connection stays direct, one for the process."""
    start_listener(
        "--channels",
        "post_created",
        "--concurrency",
        "8",
        "--batch-size",
        "8",
        env_extra={"DATABASE_URL": pgbouncer, "EVENTBUS_LISTEN_DATABASE_URL": database_url()},
        workers=1,
    )
    Post.objects.bulk_create(
        [Post(title=f"pooled {i}", body="a b c d", author=author) for i in range(200)]
    )
    wait_until(
        lambda: EventRecord.objects.filter(channel="post_created", state="done").count() == 200,
        timeout=30,
        what="200 posts handled by 8 slots through 4 server connections",
    )
    assert set(Post.objects.values_list("word_count", flat=True)) == {4}
    servers = admin_console(pgbouncer, "SERVERS")
    assert 0 < len(servers) <= 4, servers
    clients = admin_console(pgbouncer, "CLIENTS")
    assert len(clients) > 4, "more slots than server connections"
    assert "eventbus-listen" not in {c.get("application_name") for c in clients}
