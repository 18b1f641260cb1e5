"""`./manage.py listen` as real processes against a real database and a real SMTP server."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pgtrigger
import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from psycopg import sql

import channels
from blog.models import Comment, Post, PostTag, Tag
from eventbus import Chain, Channel
from eventbus.integrations.tasks import queues as task_queues
from eventbus.models import EventRecord, WorkerRecord
from tests.support import Listener, SMTPServer, database_url, manage, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

StartListener = Callable[..., Listener]


def done_count() -> int:
    return EventRecord.objects.filter(state="done").count()


def wait_all_done(expected: int, timeout: float = 90) -> None:
    wait_until(
        lambda: done_count() >= expected,
        timeout,
        what=f"{expected} events done (states: "
        f"{Counter(EventRecord.objects.values_list('state', flat=True))})",
    )
    assert EventRecord.objects.exclude(state="done").count() == 0


def assert_each_handled_once() -> None:
    attempts = Counter(EventRecord.objects.values_list("attempts", flat=True))
    assert set(attempts) == {1}, f"attempt counts: {attempts}"


def bulk_comments(post: Post, commenter: User, n: int) -> None:
    Comment.objects.bulk_create(
        [Comment(post=post, author=commenter, body=f"comment {i}") for i in range(n)],
        batch_size=1000,
    )


def test_3_processes_email_5000_bulk_created_comments_exactly_once(
    start_listener: StartListener, smtp: SMTPServer, post: Post, reader: User
) -> None:
    start_listener("--processes", "3", smtp=smtp, workers=3)
    bulk_comments(post, reader, 5000)
    wait_all_done(5001)
    ids = smtp.mailbox.event_ids()
    expected = set(
        EventRecord.objects.filter(channel="comment_created").values_list("pk", flat=True)
    )
    assert len(ids) == 5000, "every comment email sent"
    assert set(ids) == expected and len(set(ids)) == len(ids), "no email missing or doubled"
    assert_each_handled_once()


def test_two_listen_commands_at_once_handle_each_event_once(
    start_listener: StartListener, smtp: SMTPServer, post: Post, reader: User, author: User
) -> None:
    tags = Tag.objects.bulk_create([Tag(name=f"tag{i}") for i in range(5)])
    posts = Post.objects.bulk_create(
        [Post(title=f"p{i}", body="x y", author=author) for i in range(400)]
    )
    bulk_comments(post, reader, 1000)
    PostTag.objects.bulk_create([PostTag(post=p, tag=t) for p in posts for t in tags])
    first = start_listener("--processes", "2", "--batch-size", "20", smtp=smtp)
    second = start_listener("--processes", "2", "--batch-size", "20", smtp=smtp)
    wait_all_done(1 + 1000 + 400 + 2000)
    assert sorted(Tag.objects.values_list("post_count", flat=True)) == [400] * 5
    ids = smtp.mailbox.event_ids()
    assert len(ids) == len(set(ids)) == 1000
    assert_each_handled_once()
    handlers = set(EventRecord.objects.values_list("worker", flat=True))
    supervisors = {first.pid, second.pid}
    workers = {int(w.rsplit(":", 1)[1]) for w in handlers}
    assert not workers & supervisors, "workers, not supervisors, handle events"


def test_a_worker_killed_mid_stream_loses_nothing(
    start_listener: StartListener, author: User
) -> None:
    tags = Tag.objects.bulk_create([Tag(name=f"tag{i}") for i in range(10)])
    posts = Post.objects.bulk_create(
        [Post(title=f"p{i}", body="a b c", author=author) for i in range(1500)]
    )
    PostTag.objects.bulk_create([PostTag(post=p, tag=t) for p in posts for t in tags])
    total = 1500 + 15000
    listener = start_listener("--processes", "2", "--batch-size", "50", workers=2)
    wait_until(lambda: done_count() > 500, 60, what="processing to be under way")
    victim = listener.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert done_count() < total, "killed while events were still in flight"
    wait_all_done(total)
    assert sorted(Tag.objects.values_list("post_count", flat=True)) == [1500] * 10
    assert Post.objects.filter(word_count=3).count() == 1500
    wait_until(
        lambda: f"(pid {victim}) exited with code -9; restarting" in listener.log(),
        10,
        what="the supervisor to report the restart",
    )
    wait_until(lambda: len(listener.worker_pids()) == 2, 10, what="a replacement worker")
    assert victim not in listener.worker_pids()


def test_events_written_while_no_listener_ran_are_handled_on_start(
    start_listener: StartListener, post: Post, author: User
) -> None:
    tag = Tag.objects.create(name="early")
    post.tags.add(tag)
    start_listener("--processes", "2")
    wait_all_done(2)
    post.refresh_from_db()
    assert post.word_count == 4
    assert Tag.objects.get().post_count == 1


def test_an_event_whose_wakeup_was_lost_is_found_by_polling(
    start_listener: StartListener, author: User
) -> None:
    start_listener("--poll-interval", "0.2", workers=1)
    with pgtrigger.ignore("blog.Post:eb_post_created_ins"):  # no trigger, so no NOTIFY
        post = Post.objects.create(title="quiet", body="no wake up", author=author)
    EventRecord.objects.create(
        channel="post_created", operation="INSERT", table_name="blog_post", new={"id": post.pk}
    )
    wait_all_done(1, timeout=10)
    post.refresh_from_db()
    assert post.word_count == 3


def test_a_rolled_back_comment_sends_no_email(
    start_listener: StartListener, smtp: SMTPServer, post: Post, reader: User
) -> None:
    start_listener(smtp=smtp, workers=1)

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        Comment.objects.create(post=post, author=reader, body="rolled back")
        raise Abort
    kept = Comment.objects.create(post=post, author=reader, body="committed")
    wait_until(lambda: smtp.mailbox.snapshot(), 10, what="the committed comment's email")
    wait_all_done(2)
    [message] = smtp.mailbox.snapshot()
    assert "committed" in message.get_payload()
    assert EventRecord.objects.filter(channel="comment_created").get().new["id"] == kept.pk


def test_a_one_megabyte_post_is_processed(start_listener: StartListener, author: User) -> None:
    start_listener(workers=1)
    post = Post.objects.create(title="big", body="word " * 209_715, author=author)
    wait_all_done(1)
    post.refresh_from_db()
    assert post.word_count == 209_715 and post.processed_at is not None


def test_a_raising_handler_is_recorded_and_the_worker_goes_on(
    start_listener: StartListener, smtp: SMTPServer, post: Post, reader: User
) -> None:
    listener = start_listener("--processes", "2", smtp=smtp, workers=2)
    wait_all_done(1)
    unknown = EventRecord.objects.create(
        channel="nobody_handles_this", operation="INSERT", table_name="x", new={}
    )
    malformed = EventRecord.objects.create(
        channel="comment_created", operation="INSERT", table_name="blog_comment", new={}
    )
    bulk_comments(post, reader, 50)
    wait_until(lambda: done_count() == 51, 30, what="the good events")
    wait_until(lambda: EventRecord.objects.filter(state="dead").count() == 1, 30)
    unknown.refresh_from_db()
    malformed.refresh_from_db()
    assert (unknown.state, unknown.attempts) == ("pending", 0), "no handler here: it waits"
    assert malformed.last_error.startswith("MalformedEvent:")
    assert malformed.attempts == 1
    assert f"event {malformed.pk} comment_created: dead after attempt 1" in listener.log()
    assert listener.process.poll() is None, "the listener is still running"
    assert len(smtp.mailbox.snapshot()) == 50


def test_sigterm_stops_cleanly_within_seconds(start_listener: StartListener, post: Post) -> None:
    listener = start_listener("--processes", "2", workers=2)
    wait_all_done(1)
    started = time.monotonic()
    assert listener.terminate(timeout=15) == 0
    assert time.monotonic() - started < 5
    log = listener.log()
    assert log.count(" stopped") == 3, log  # two workers and the supervisor
    assert "did not stop in time" not in log


def test_listeners_reconnect_after_their_connections_are_terminated(
    start_listener: StartListener, post: Post, author: User
) -> None:
    listener = start_listener("--processes", "2", workers=2)
    wait_all_done(1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (terminated,) = cursor.fetchone()
    assert terminated >= 2
    wait_until(
        lambda: listener.log().count("lost the database") >= 2, 10, what="both workers to notice"
    )
    post.tags.add(Tag.objects.create(name="after"))
    wait_all_done(2, timeout=30)
    assert Tag.objects.get().post_count == 1


def test_workers_stop_when_their_supervisor_is_killed(start_listener: StartListener) -> None:
    listener = start_listener("--processes", "2", "--poll-interval", "0.2", workers=2)
    workers = listener.worker_pids()
    os.kill(listener.pid, signal.SIGKILL)
    listener.process.wait()

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and _is_running(pid) for pid in workers)

    wait_until(all_gone, 10, what="orphaned workers to stop")
    assert listener.log().count("lost its supervisor; stopping") == 2


def _is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_listener_started_before_migrations_says_to_migrate() -> None:
    """A listener started before migrations (a pod before its migration Job) refuses to
    start with the remedy, instead of workers crashing on a missing table in a loop."""
    name = f"{connection.settings_dict['NAME']}_unmigrated"
    server = urlunsplit(urlsplit(database_url())._replace(path="/postgres"))
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        empty = urlunsplit(urlsplit(database_url())._replace(path=f"/{name}"))
        result = manage("listen", env={"DATABASE_URL": empty}, timeout=60)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    assert result.returncode == 1
    assert (
        f"database '{name}' lacks the tables eventbus_event, eventbus_worker, eventbus_inflight, "
        "eventbus_rollup, eventbus_pause: "
        "run ./manage.py migrate before starting listeners"
    ) in result.stderr


# A channel only the next release declares and handles (tests/release_two.py). This test
# process never imports it; listeners started with NEW_RELEASE do.
NEW_CHANNEL = "release_two_shipped"
NEW_RELEASE = {"EVENTBUS_LISTENER_MODULES": "listeners,tests.release_two"}
SITE_CHANNELS = sorted(c.name for c in vars(channels).values() if isinstance(c, Channel | Chain))
# What a listener of the site handles: its channels, and the channels of its task queues.
HANDLED = sorted([*SITE_CHANNELS, *task_queues.channel_names()])


def publish_raw(channel: str) -> EventRecord:
    """An event as the new release's code would publish it."""
    return EventRecord.objects.create(channel=channel, operation="PUBLISH", table_name="", new={})


def test_a_listener_of_an_older_release_leaves_a_newer_channels_events_pending(
    start_listener: StartListener, author: User
) -> None:
    """Rolling deploy: new code writes events of a channel the old listeners do not know.
    They wait for a listener that handles them instead of dying as UnknownChannel."""
    start_listener("--processes", "2", workers=2)
    shipped = publish_raw(NEW_CHANNEL)
    Post.objects.create(title="after", body="a b", author=author)  # a newer, known event
    wait_until(
        lambda: EventRecord.objects.filter(channel="post_created", state="done").exists(),
        30,
        what="the old listener to handle the post",
    )
    shipped.refresh_from_db()
    assert (shipped.state, shipped.attempts, shipped.last_error) == ("pending", 0, None)
    assert set(WorkerRecord.objects.values_list("channels", flat=True)) == {",".join(HANDLED)}, (
        "each heartbeat lists the channels its worker handles"
    )

    start_listener(env_extra=NEW_RELEASE, workers=1)
    wait_until(
        lambda: EventRecord.objects.filter(pk=shipped.pk, state="done").exists(),
        30,
        what="the new release's listener to handle the new channel's event",
    )
    assert Tag.objects.filter(name=f"release-two-{shipped.pk}").exists()
    assert ",".join(sorted([*HANDLED, NEW_CHANNEL])) in set(
        WorkerRecord.objects.values_list("channels", flat=True)
    )


def test_a_listener_refuses_to_start_without_handlers_and_check_warns(
    start_listener: StartListener,
) -> None:
    """A project that declares channels but forgets to list its handler modules is told
    so before any event is touched, by `listen` and by `manage.py check`."""
    unwired = {"EVENTBUS_LISTENER_MODULES": "tests.release_two"}  # the site's listeners forgotten
    refused = manage("listen", env=unwired, timeout=30)
    assert refused.returncode == 1
    missing = ", ".join(SITE_CHANNELS)
    assert f"no handler is registered for channel(s) {missing}" in refused.stderr
    assert 'EVENTBUS["LISTENER_MODULES"]' in refused.stderr

    partial = manage("listen", "--channels", NEW_CHANNEL, "comment_created", env=unwired)
    assert partial.returncode == 1
    assert "no handler is registered for channel(s) comment_created:" in partial.stderr

    warned = manage("check", env=unwired)
    assert warned.returncode == 0, warned.stderr
    report = warned.stdout + warned.stderr
    assert f"(eventbus.W001) declared channels have no handler: {missing}" in report
    assert 'EVENTBUS["LISTENER_MODULES"]' in report
    wired = manage("check")
    assert "eventbus.W001" not in wired.stdout + wired.stderr

    start_listener("--channels", NEW_CHANNEL, env_extra=unwired, workers=1)
    shipped = publish_raw(NEW_CHANNEL)
    wait_until(
        lambda: EventRecord.objects.filter(pk=shipped.pk, state="done").exists(),
        30,
        what="a listener limited to the channels it has handlers for to run",
    )


def test_a_misspelt_listener_module_is_a_configuration_error_naming_the_setting() -> None:
    result = manage("check", env={"EVENTBUS_LISTENER_MODULES": "listners"})
    assert result.returncode != 0
    assert (
        "ImproperlyConfigured: EVENTBUS[\"LISTENER_MODULES\"] lists 'listners', which is not "
        "an importable module (No module named 'listners')"
    ) in result.stderr
