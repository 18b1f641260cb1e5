"""A project that reads from a replica: handlers still read the primary, with no `using`,
and so does code in `read_primary()`.

The replica is played by a copy of the test database taken before the last writes
(`CREATE DATABASE … TEMPLATE`): a replica lagging behind, with a stale post title and
without the new comment's author. The reference site reads from it when
`REPLICA_DATABASE_URL` is set, and its comment handler says nothing about databases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core import checks
from django.db import connection, connections
from django.test import override_settings
from psycopg import sql

from blog.models import Comment, Post
from eventbus import read_primary
from eventbus.integrations import routing
from tests.support import Listener, SMTPServer, database_url, manage, wait_until


@pytest.fixture
def stale_replica() -> Iterator[Callable[[], str]]:
    """A function that snapshots the test database now, as a 'replica'; returns its URL."""
    made: list[str] = []
    primary = database_url()
    server = urlunsplit(urlsplit(primary)._replace(path="/postgres"))

    def snapshot() -> str:
        name = f"{connection.settings_dict['NAME']}_replica"
        connections.close_all()  # a template database must have no other sessions
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(connection.settings_dict["NAME"])
                )
            )
        made.append(name)
        return urlunsplit(urlsplit(primary)._replace(path=f"/{name}"))

    yield snapshot
    with psycopg.connect(server, autocommit=True) as admin:
        for name in made:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.django_db(transaction=True)
def test_handlers_read_the_primary_while_the_site_reads_a_stale_replica(
    author: User,
    smtp: SMTPServer,
    stale_replica: Callable[[], str],
    start_listener: Callable[..., Listener],
) -> None:
    post = Post.objects.create(title="Draft title", body="first words", author=author)
    replica_url = stale_replica()
    Post.objects.filter(pk=post.pk).update(title="Final title")
    commenter = User.objects.create_user("grace", email="grace@example.com")
    comment = Comment.objects.create(post=post, author=commenter, body="Lovely.")

    # The site, configured with the replica, reads the stale copy: the router is live.
    shell = "from blog.models import Post; print(Post.objects.get(pk={}).title)"
    seen = manage(
        "shell", "-c", shell.format(post.pk), env={"REPLICA_DATABASE_URL": replica_url}, timeout=60
    )
    assert seen.stdout.strip().splitlines()[-1] == "Draft title", seen.stderr

    start_listener(
        "--channels", "comment_created", smtp=smtp, env_extra={"REPLICA_DATABASE_URL": replica_url}
    )
    [message] = wait_until(smtp.mailbox.snapshot, what="the comment email")
    assert message["Subject"] == 'New comment on "Final title"'
    assert "grace commented" in message.get_payload()
    assert message["X-Eventbus-Event"]
    assert Comment.objects.filter(pk=comment.pk).exists()


def test_the_router_decides_only_while_a_batch_is_handled() -> None:
    router = routing.PrimaryForHandlers()
    assert router.db_for_read(Post) is None
    with routing.pinned("default"):
        assert router.db_for_read(Post) == "default"
        assert router.db_for_write(Post) == "default"
    assert router.db_for_write(Post) is None


REPLICA_ROUTERS = [routing.ROUTER, "config.routers.ReadReplica"]


@override_settings(DATABASE_ROUTERS=REPLICA_ROUTERS)
def test_reads_in_a_read_primary_block_go_to_the_primary_and_only_there() -> None:
    assert Post.objects.all().db == "replica"
    with read_primary():
        assert Post.objects.all().db == "default"
        assert User.objects.filter(username="ada").db == "default"
    assert Post.objects.all().db == "replica"
    with read_primary(using="other"):
        assert Post.objects.all().db == "other"


@override_settings(DATABASE_ROUTERS=REPLICA_ROUTERS)
def test_read_primary_decorates_views_sync_and_async() -> None:
    @read_primary
    def view() -> str:
        return Post.objects.all().db

    @read_primary()
    async def async_view() -> list[str]:
        # Django's async ORM runs its queries in a thread, as sync_to_async does.
        return [Post.objects.all().db, await sync_to_async(lambda: Post.objects.all().db)()]

    @read_primary
    def failing_view() -> None:
        raise RuntimeError("boom")

    assert view() == "default"
    assert asyncio.run(async_view()) == ["default", "default"]
    with pytest.raises(RuntimeError):
        failing_view()
    assert Post.objects.all().db == "replica"  # each call let go, even the one that raised


def test_read_primary_in_a_handler_keeps_the_claims_alias() -> None:
    router = routing.PrimaryForHandlers()
    with routing.pinned("claimed"), read_primary():
        assert router.db_for_read(Post) == "claimed"
    assert router.db_for_read(Post) is None


@pytest.mark.parametrize(
    ("routers", "errors"),
    [
        ([], []),
        (REPLICA_ROUTERS, []),
        (["config.routers.ReadReplica"], ["eventbus.E001"]),
        (["config.routers.ReadReplica", routing.ROUTER], ["eventbus.E001"]),
    ],
)
def test_a_router_setup_that_would_let_handlers_read_a_replica_fails_the_checks(
    routers: list[str], errors: list[str]
) -> None:
    with override_settings(DATABASE_ROUTERS=routers):
        found = checks.run_checks(tags=["eventbus"])
    assert [m.id for m in found] == errors, [str(m) for m in found]
