"""Connection faults: listeners reconnect by themselves, re-LISTEN, drain, lose nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from blog.models import Post
from eventbus.models import EventRecord
from tests.proxy import Proxy
from tests.support import Listener, free_port, manage_env, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def processed(post: Post) -> bool:
    return Post.objects.filter(pk=post.pk, processed_at__isnull=False).exists()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    s = connection.settings_dict
    socket_dir = (s.get("OPTIONS") or {}).get("host")
    if s.get("HOST"):
        target: tuple[str, int] | str = (s["HOST"], int(s.get("PORT") or 5432))
    else:
        target = os.path.join(socket_dir or "/var/run/postgresql", ".s.PGSQL.5432")
    server = Proxy(target).start()
    yield server
    server.stop()


def proxied_url(proxy: Proxy) -> str:
    s = connection.settings_dict
    return f"postgresql://{s.get('USER') or ''}@127.0.0.1:{proxy.port}/{s['NAME']}"


def test_a_half_open_listen_connection_is_detected_and_replaced(
    tmp_path: Path, proxy: Proxy, author: User
) -> None:
    """The LISTEN connection goes through a proxy that then black-holes it. Polling is set
    to 60 s, so only a new listen connection can deliver the wake-up in time."""
    log = tmp_path / "listen.log"
    env = manage_env(
        EVENTBUS_LISTEN_DATABASE_URL=proxied_url(proxy), EVENTBUS_HEALTH_INTERVAL="0.5"
    )
    listener = Listener(log, "--poll-interval", "60", env=env)
    try:
        listener.wait_started(1)
        first = Post.objects.create(title="before", body="a", author=author)
        wait_until(lambda: processed(first), 10, what="a wake-up through the proxy")
        assert proxy.blackhole_existing() >= 1
        wait_until(
            lambda: "delivered no ping" in listener.log(),
            10,
            what=f"the silent connection to be noticed; log:\n{listener.log()}",
        )
        second = Post.objects.create(title="after", body="b", author=author)
        wait_until(lambda: processed(second), 10, what="a wake-up on the new connection")
        assert listener.log().count("lost the database") == 1
    finally:
        listener.stop()


def _can_restart_postgres() -> str | None:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return "pg_ctlcluster is not available here"
    host = connection.settings_dict.get("HOST")
    if host not in ("127.0.0.1", "localhost"):
        return f"the test database ({host or 'a unix socket'}) is not this machine's cluster"
    if os.geteuid() != 0:
        return "restarting the cluster needs root"
    return None


@pytest.mark.postgres_restart
def test_listeners_survive_a_postgresql_restart(
    start_listener: Callable[..., Listener], author: User
) -> None:
    reason = _can_restart_postgres()
    if reason:
        pytest.skip(f"cannot restart PostgreSQL: {reason}")
    listener = start_listener("--processes", "2", workers=2)
    first = Post.objects.create(title="before", body="a", author=author)
    wait_until(lambda: processed(first), 10)
    version = sorted(os.listdir("/etc/postgresql"))[0]
    connection.close()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=60,
        capture_output=True,
    )
    wait_until(
        lambda: listener.log().count("lost the database") >= 2,
        20,
        what="both workers to notice the restart",
    )
    deadline = time.monotonic() + 30
    while True:  # the server accepts connections again a moment after pg_ctlcluster returns
        try:
            second = Post.objects.create(title="after", body="b", author=author)
            break
        except Exception:
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    wait_until(lambda: processed(second), 30, what="the event written after the restart")
    assert EventRecord.objects.exclude(state="done").count() == 0
    assert set(EventRecord.objects.values_list("attempts", flat=True)) == {1}


def test_a_worker_backing_off_from_a_lost_database_stops_when_its_supervisor_dies(
    tmp_path: Path,
) -> None:
    """Its listen connection is refused, so its reconnect backoff grows to 8 s; it must
    still notice the dead supervisor within a beat, not at the end of its sleep."""
    s = connection.settings_dict
    refused = f"postgresql://{s.get('USER') or ''}@127.0.0.1:{free_port()}/{s['NAME']}"
    env = manage_env(EVENTBUS_LISTEN_DATABASE_URL=refused, EVENTBUS_RECONNECT_MAX_DELAY="60")
    listener = Listener(tmp_path / "listen.log", "--poll-interval", "60", env=env)
    try:
        listener.wait_started(1)
        (worker,) = listener.worker_pids()
        wait_until(lambda: "reconnecting in 8.0 s" in listener.log(), 30, what="a long backoff")
        os.kill(listener.pid, signal.SIGKILL)
        listener.process.wait()
        wait_until(
            lambda: (
                not Path(f"/proc/{worker}").exists()
                or Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z"
            ),
            3,
            what="the orphaned worker to stop during its 8 s backoff",
        )
        assert "lost its supervisor; stopping" in listener.log()
    finally:
        listener.stop()
