"""A listener runs under a least-privilege role: it handles events and can do nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from psycopg import errors, sql

from blog.models import Comment, Post, PostTag, Tag
from eventbus.models import EventRecord
from eventbus.operating import roles
from tests.support import ROOT, Listener, SMTPServer, database_url, manage, wait_until

ROLE = "eventbus_test_listener"
READS = ["auth.User", "blog.Comment"]
UPDATES = ["blog.Post", "blog.Tag", "blog.Category"]
REFERENCE_ARGS = ["--read", *READS, "--update", *UPDATES]  # as deploy/listener-role.sql says


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.fixture
def listener_role() -> Iterator[str]:
    """The reference site's listener role, created in the test database; its URL."""
    with connection.cursor() as cursor:
        cursor.execute(roles.listener_role(ROLE, read=READS, update=UPDATES))
    yield as_role(database_url(), ROLE)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [ROLE]
        )
        cursor.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(ROLE)))


@pytest.mark.django_db(transaction=True)
def test_a_listener_under_the_least_privilege_role_handles_every_channel_it_serves(
    listener_role: str,
    author: User,
    reader: User,
    smtp: SMTPServer,
    start_listener: Callable[..., Listener],
) -> None:
    post = Post.objects.create(
        title="Roles", body="three words here", author=author, callback_url="http://127.0.0.1:9/"
    )
    Comment.objects.create(post=post, author=reader, body="Tidy.")
    tag = Tag.objects.create(name="security")
    PostTag.objects.create(post=post, tag=tag)

    start_listener(
        "--channels",
        "comment_created",
        "post_created",
        "post_tags_changed",
        smtp=smtp,
        env_extra={"DATABASE_URL": listener_role},
    )
    wait_until(smtp.mailbox.snapshot, what="the comment email")
    wait_until(
        lambda: (
            not EventRecord.objects.exclude(channel="post_processing_finished")
            .exclude(state="done")
            .exists()
        ),
        what="every served event done",
    )
    post.refresh_from_db()
    tag.refresh_from_db()
    assert post.word_count == 3
    assert tag.post_count == 1
    # The handler published the callback event: INSERT on the event table, from a handler.
    assert EventRecord.objects.filter(channel="post_processing_finished").count() == 1

    health = manage(
        "eventbus_health", "--skip-backlog", env={"DATABASE_URL": listener_role}, timeout=60
    )
    assert health.returncode == 0, health.stderr


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE blog_post",
        "TRUNCATE eventbus_event",
        "DELETE FROM blog_post",
        "INSERT INTO blog_tag (name, post_count) VALUES ('x', 0)",
        "UPDATE blog_comment SET body = ''",
        "SELECT count(*) FROM blog_posttag",
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE eventbus_event DISABLE TRIGGER ALL",
    ],
)
def test_the_listener_role_can_do_nothing_else(listener_role: str, statement: str) -> None:
    with psycopg.connect(listener_role) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


def test_deploy_holds_the_reference_sites_role_as_the_command_prints_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command("eventbus_role", "eventbus_listener", *REFERENCE_ARGS)
    assert (ROOT / "deploy" / "listener-role.sql").read_text() == capsys.readouterr().out


def test_an_unknown_model_or_an_odd_role_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'blog\.Nope'"):
        roles.listener_role(ROLE, read=["blog.Nope"])
    with pytest.raises(ValueError, match="not a plain identifier"):
        roles.listener_role("listener;\nDROP TABLE blog_post")
