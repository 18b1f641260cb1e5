"""Handling a batch: each event's effects commit with its state, failures stay isolated."""

from __future__ import annotations

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings

from blog.models import Category, Comment, Post, Tag
from eventbus import Channel, Event
from eventbus.models import EventRecord
from eventbus.running.executor import Executor
from eventbus.sql import Scope
from eventbus.testing import WORKER_NAME, run_events
from tests.support import SMTPServer, database_url, free_port, wait_until

pytestmark = pytest.mark.django_db

writes_then_raises = Channel("test_writes_then_raises")


@writes_then_raises.on
def _write_then_raise(event: Event) -> None:
    Tag.objects.create(name=f"half-done-{event.id}")
    raise RuntimeError("handler blew up after writing")


def smtp_settings(port: int) -> override_settings:
    return override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
    )


def state(event_id: int) -> EventRecord:
    return EventRecord.objects.get(pk=event_id)


def test_post_processing_fills_word_count_and_processed_at(author: User) -> None:
    post = Post.objects.create(title="t", body="one two three", author=author)
    run_events()
    post.refresh_from_db()
    assert (post.word_count, post.processed_at is not None) == (3, True)
    Post.objects.filter(pk=post.pk).update(body="now just four words")
    run_events()
    post.refresh_from_db()
    assert post.word_count == 4


def test_tag_and_category_counts_follow_links(post: Post, author: User) -> None:
    other = Post.objects.create(title="o", body="b", author=author)
    tag, category = Tag.objects.create(name="t"), Category.objects.create(name="c")
    post.tags.add(tag)
    other.tags.add(tag)
    post.categories.add(category)
    run_events()
    assert Tag.objects.get().post_count == 2
    assert Category.objects.get().post_count == 1
    post.tags.clear()
    other.delete()  # cascades to its link: one more unlink
    run_events()
    assert Tag.objects.get().post_count == 0


def test_handled_events_are_marked_done_once(post: Post, reader: User, smtp: SMTPServer) -> None:
    Comment.objects.create(post=post, author=reader, body="nice")
    with smtp_settings(smtp.port):
        outcomes = run_events()
    assert all(o.ok for o in outcomes) and len(outcomes) == 2
    for record in EventRecord.objects.all():
        assert (record.state, record.attempts, record.worker) == ("done", 1, WORKER_NAME)
        assert record.first_claimed_at is not None and record.finished_at is not None
    assert run_events() == []


def test_comment_email_goes_to_the_post_author(post: Post, reader: User, smtp: SMTPServer) -> None:
    Comment.objects.create(post=post, author=reader, body="Lovely engine.\nMore, please.")
    with smtp_settings(smtp.port):
        run_events()
    [message] = smtp.mailbox.snapshot()
    event = EventRecord.objects.get(channel="comment_created")
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == 'New comment on "Engines"'
    assert "> Lovely engine.\n> More, please." in message.get_payload().replace("\r\n", "\n")
    assert message["X-Eventbus-Event"] == str(event.pk)
    assert message["Message-ID"] == f"<eventbus.comment_created.{event.pk}@localhost>"


def test_the_message_id_is_the_same_on_every_attempt(
    post: Post, reader: User, smtp: SMTPServer
) -> None:
    Comment.objects.create(post=post, author=reader, body="again")
    with smtp_settings(smtp.port):
        run_events()
        EventRecord.objects.filter(channel="comment_created").update(state="pending")
        run_events()
    first, second = smtp.mailbox.snapshot()
    assert first["Message-ID"] == second["Message-ID"]


def test_no_email_when_the_author_comments_on_their_own_post(
    post: Post, author: User, smtp: SMTPServer
) -> None:
    Comment.objects.create(post=post, author=author, body="replying to myself")
    with smtp_settings(smtp.port):
        outcomes = run_events()
    assert all(o.ok for o in outcomes)
    assert smtp.mailbox.snapshot() == []


def test_a_raising_handler_fails_its_event_only(post: Post, reader: User) -> None:
    """The mail server is down: the comment fails, post-processing in the batch is done."""
    Comment.objects.create(post=post, author=reader, body="hello?")
    with smtp_settings(free_port()):  # nothing listens there
        run_events()
    comment_event = EventRecord.objects.get(channel="comment_created")
    assert comment_event.state == "failed"
    assert comment_event.attempts == 1
    assert comment_event.last_error.startswith("ConnectionRefusedError")
    assert comment_event.run_after > comment_event.created_at, "a retry is scheduled"
    [entry] = comment_event.errors
    assert entry["attempt"] == 1 and entry["error"].startswith("ConnectionRefusedError")
    assert EventRecord.objects.get(channel="post_created").state == "done"
    assert run_events() == [], "a failed event waits for its backoff; workers do not spin on it"


def test_a_failing_handlers_writes_are_undone() -> None:
    record = EventRecord.objects.create(
        channel="test_writes_then_raises", operation="INSERT", table_name="x", new={}
    )
    run_events()
    record.refresh_from_db()
    assert record.state == "failed"
    assert "RuntimeError: handler blew up after writing" in record.last_error
    assert not Tag.objects.filter(name__startswith="half-done").exists()


def test_an_event_of_a_channel_without_a_handler_stays_pending_for_one_that_has_it() -> None:
    """A listener of an older release, or one whose LISTENER_MODULES forgot a module,
    must not kill events it cannot handle: a listener that can will come for them."""
    record = EventRecord.objects.create(
        channel="nobody_handles_this", operation="INSERT", table_name="x", new={}
    )
    assert Executor("test-worker").run_batch(Scope(), 1000) == []
    record.refresh_from_db()
    assert (record.state, record.attempts, record.last_error) == ("pending", 0, None)


def test_a_malformed_event_is_dead_with_a_clear_reason(post: Post) -> None:
    record = EventRecord.objects.create(
        channel="comment_created", operation="INSERT", table_name="blog_comment", new={"id": 1}
    )
    outcomes = run_events()
    record.refresh_from_db()
    assert record.state == "dead"
    assert record.last_error.startswith(
        f"MalformedEvent: event {record.pk} (comment_created) lacks post_id, author_id, body"
    )
    assert [o.ok for o in outcomes if o.event_id != record.pk] == [True]


def test_a_row_deleted_before_its_event_runs_is_dead_with_a_clear_reason(
    post: Post, reader: User
) -> None:
    comment = Comment.objects.create(post=post, author=reader, body="soon orphaned")
    Post.objects.filter(pk=post.pk).delete()
    run_events()
    record = EventRecord.objects.get(channel="comment_created")
    assert record.state == "dead"
    assert record.last_error.startswith(
        f"RowGone: post {post.pk} of comment {comment.pk} no longer exists"
    )


locks_a_tag = Channel("test_locks_a_tag")


@locks_a_tag.on
def _lock_tag(event: Event) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '100ms'")
    Tag.objects.select_for_update().get(pk=event.row["tag_id"])


@pytest.mark.django_db(transaction=True)
def test_a_transient_lock_error_backs_off_briefly_and_uses_up_no_attempt() -> None:
    tag = Tag.objects.create(name="contended")
    record = EventRecord.objects.create(
        channel="test_locks_a_tag", operation="INSERT", table_name="x", new={"tag_id": tag.pk}
    )
    with psycopg.connect(database_url()) as other:  # another transaction holds the row
        other.execute("SELECT 1 FROM blog_tag WHERE id = %s FOR UPDATE", [tag.pk])
        [outcome] = run_events()
    record.refresh_from_db()
    assert outcome.status == "pending"
    assert (record.state, record.attempts, record.transient_errors) == ("pending", 1, 1)
    assert record.last_error.startswith("OperationalError: canceling statement due to lock")
    assert 0.025 <= outcome.retry_in <= 0.05  # a short jittered backoff, not at once
    # the lock is gone: once the backoff has passed it runs again and succeeds
    [outcome] = wait_until(run_events, 5, what="the retry after the backoff")
    record.refresh_from_db()
    assert (outcome.status, record.state, record.attempts) == ("done", "done", 2)


def test_a_bad_event_in_a_batch_handler_fails_alone(post: Post, author: User) -> None:
    other = Post.objects.create(title="o", body="b", author=author)
    tag = Tag.objects.create(name="t")
    post.tags.add(tag)
    bad = EventRecord.objects.create(
        channel="post_tags_changed", operation="INSERT", table_name="blog_posttag", new={}
    )
    other.tags.add(tag)
    outcomes = run_events()
    bad.refresh_from_db()
    assert bad.state == "dead"
    assert bad.last_error.startswith(f"MalformedEvent: event {bad.pk} (post_tags_changed) lacks")
    assert [o.status for o in outcomes if o.event_id != bad.pk] == ["done"] * 4
    assert Tag.objects.get().post_count == 2
