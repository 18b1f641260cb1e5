"""Listeners on several hosts share one database's events: each handles a share, none twice.

Each "host" is a listener in its own network and UTS namespace (`unshare --net --uts`):
its own hostname, no network at all, and PostgreSQL reached through its unix socket, as a
machine reaches a shared server. Where namespaces cannot be made, the hosts are separate
process groups with separate connections, and the shares are told apart by process.
"""

from __future__ import annotations

import functools
import subprocess
from collections import Counter
from collections.abc import Callable
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from blog.models import Post, PostTag, Tag
from eventbus.models import EventRecord
from tests.support import Listener, manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HOSTS = ("host-a", "host-b")
POSTS = 400
PER_TRANSACTION = 20
CHANNELS = ("post_created", "post_tags_changed")


@functools.cache
def namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "--net", "--uts", "true"], timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def on_host(name: str) -> list[str]:
    """A command prefix that runs the rest on a 'host' of its own: hostname and network."""
    if not namespaces_work():
        return []
    return ["unshare", "--net", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name]


def socket_url() -> str:
    """The test database by unix socket: reachable from a namespace without a network."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW unix_socket_directories")
        directory = cursor.fetchone()[0].split(",")[0].strip()
    user = quote(connection.settings_dict["USER"] or "", safe="")
    name = connection.settings_dict["NAME"]
    return f"postgresql://{user}@/{name}?host={quote(directory, safe='/')}"


def test_listeners_on_two_hosts_share_the_events_and_handle_each_once(
    author: User, start_listener: Callable[..., Listener]
) -> None:
    url = socket_url()
    listeners = {
        host: start_listener(
            "--processes",
            "2",
            "--batch-size",
            "10",
            "--channels",
            *CHANNELS,
            env_extra={"DATABASE_URL": url},
            prefix=on_host(host),
            workers=2,
        )
        for host in HOSTS
    }
    shared = Tag.objects.create(name="shared")
    for start in range(0, POSTS, PER_TRANSACTION):
        with transaction.atomic():
            posts = Post.objects.bulk_create(
                Post(title=f"p{i}", body="one two three", author=author)
                for i in range(start, start + PER_TRANSACTION)
            )
            PostTag.objects.bulk_create(PostTag(post=p, tag=shared) for p in posts)

    wait_until(
        lambda: EventRecord.objects.filter(state="done").count() == 2 * POSTS,
        timeout=120,
        what="every event done",
    )
    shared.refresh_from_db()
    assert shared.post_count == POSTS, "each tag link counted exactly once"
    assert set(Post.objects.values_list("word_count", flat=True)) == {3}
    assert not EventRecord.objects.exclude(state="done").exists()

    workers = list(EventRecord.objects.values_list("worker", flat=True))
    by_pid = Counter(int(w.rpartition(":")[2]) for w in workers)
    for host, listener in listeners.items():
        share = sum(by_pid[pid] for pid in listener.worker_pids())
        assert share > 0, f"{host} handled nothing: {by_pid}"
    assert sum(by_pid.values()) == 2 * POSTS

    if namespaces_work():
        by_host = Counter(w.rpartition(":")[0] for w in workers)
        assert set(by_host) == set(HOSTS), by_host
        # Each host's own probe sees its own two workers, as a pod's would.
        probe = manage(
            "eventbus_health",
            "--this-host",
            "--skip-backlog",
            env={"DATABASE_URL": url},
            prefix=on_host("host-a"),
            timeout=60,
        )
        assert probe.returncode == 0, probe.stderr
        assert "ok: 2 worker(s) alive on host-a" in probe.stdout
