"""eventbus.testing: a project tests its own handlers inside its test transaction."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import TestCase

from blog.models import Comment, Post, Tag
from eventbus import Channel, Event, RetryPolicy
from eventbus.models import EventRecord
from eventbus.testing import TransactionStateBroken, capture_events, run_events

pytestmark = pytest.mark.django_db

flaky = Channel("test_flaky_tagging", operations=(), retry=RetryPolicy(max_attempts=3))
leaves_atomic_open = Channel("test_leaves_atomic_open", operations=())


@flaky.on
def _tag_then_fail_twice(event: Event) -> None:
    Tag.objects.create(name=f"attempt-{event.attempt}")
    if event.attempt < event.row["succeeds_at"]:
        raise RuntimeError(f"attempt {event.attempt} failed")


@leaves_atomic_open.on
def _leave_atomic_open(event: Event) -> None:
    transaction.atomic().__enter__()  # a bug: the block is never closed


def test_capture_names_each_event_a_block_wrote(post: Post, reader: User) -> None:
    Comment.objects.create(post=post, author=reader, body="before the block")
    with capture_events() as events:
        comment = Comment.objects.create(post=post, author=reader, body="nice")
        Post.objects.filter(pk=post.pk).update(body="a new body")
        Post.objects.filter(pk=post.pk).update(title="title only: no event")
    assert events.summary() == [
        ("comment_created", "INSERT", str(post.pk)),
        ("post_edited", "UPDATE", str(post.pk)),
    ]
    created = events.one("comment_created")
    assert (created.old, created.new["id"], created.row["body"]) == (None, comment.pk, "nice")
    edited = events.one("post_edited")
    assert (edited.old["body"], edited.new["body"]) == (post.body, "a new body")


def test_capture_fails_clearly_when_an_expected_event_is_missing(post: Post) -> None:
    with capture_events() as events:
        Post.objects.filter(pk=post.pk).update(title="no event")
    with pytest.raises(AssertionError, match=r"expected one event of post_edited, got 0"):
        events.one("post_edited")


def test_run_events_handles_pending_events_as_listen_does(author: User) -> None:
    post = Post.objects.create(title="t", body="one two three", author=author)
    outcomes = run_events()
    post.refresh_from_db()
    assert post.word_count == 3
    [outcome] = outcomes
    assert (outcome.channel, outcome.status, outcome.attempt) == ("post_created", "done", 1)
    record = EventRecord.objects.get(pk=outcome.event_id)
    assert (record.state, record.attempts, record.finished_at is not None) == ("done", 1, True)
    assert run_events() == [], "a done event is not run again"


def test_a_failed_attempt_is_undone_and_waits_for_its_backoff() -> None:
    event_id = flaky.publish({"succeeds_at": 3})
    [outcome] = run_events()
    assert (outcome.status, outcome.error.splitlines()[0]) == (
        "failed",
        "RuntimeError: attempt 1 failed",
    )
    assert not Tag.objects.exists(), "the failed attempt's write was rolled back"
    assert run_events() == [], "not due yet"
    assert EventRecord.objects.get(pk=event_id).state == "failed"


def test_retries_run_failed_events_again_until_done_or_dead() -> None:
    succeeds = flaky.publish({"succeeds_at": 3})
    never = flaky.publish({"succeeds_at": 99})
    outcomes = run_events(retries=True)
    assert [(o.event_id, o.attempt, o.status) for o in outcomes if o.event_id == succeeds] == [
        (succeeds, 1, "failed"),
        (succeeds, 2, "failed"),
        (succeeds, 3, "done"),
    ]
    assert [o.status for o in outcomes if o.event_id == never] == ["failed", "failed", "dead"]
    assert list(Tag.objects.values_list("name", flat=True)) == ["attempt-3"]


def test_run_events_takes_only_the_channels_asked_for(author: User, reader: User) -> None:
    post = Post.objects.create(title="t", body="b", author=author)
    Comment.objects.create(post=post, author=author, body="own post: no email")
    assert [o.channel for o in run_events(["post_created"])] == ["post_created"]
    assert EventRecord.objects.get(channel="comment_created").state == "pending"


def test_a_handler_that_breaks_the_transaction_fails_the_test_clearly() -> None:
    leaves_atomic_open.publish({})
    with pytest.raises(TransactionStateBroken, match="cannot trust"):
        run_events(["test_leaves_atomic_open"])
    with connection.cursor() as cursor:  # the test's own transaction is still usable
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    flaky.publish({"succeeds_at": 1})
    assert [o.status for o in run_events([flaky.name])] == ["done"]


class InATestCase(TestCase):
    """The README's example: a TestCase, where nothing ever commits."""

    def test_a_new_post_gets_its_word_count(self) -> None:
        author = User.objects.create_user("ada")
        with capture_events() as events:
            post = Post.objects.create(title="Engines", body="the analytical engine", author=author)
        self.assertEqual(events.summary(), [("post_created", "INSERT", str(post.pk))])

        [outcome] = run_events()

        self.assertTrue(outcome.ok, outcome.error)
        post.refresh_from_db()
        self.assertEqual(post.word_count, 3)
