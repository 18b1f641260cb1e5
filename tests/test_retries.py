"""Failures cost time, never an event: retries with backoff, dead letters, timeouts."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from blog.models import Comment, Post, Tag
from eventbus import Channel, Event, GiveUp, RetryLater, RetryPolicy
from eventbus.declaring.policies import resolve
from eventbus.models import EventRecord
from eventbus.running.executor import Executor
from eventbus.sql import Scope
from tests.support import SMTPServer, free_port

pytestmark = pytest.mark.django_db

not_ready = Channel("test_not_ready")
hopeless = Channel("test_hopeless")
slow_python = Channel("test_slow_python", timeout=0.3)
slow_query = Channel("test_slow_query", timeout=0.3)
declared_policy = Channel("test_declared_policy", retry=RetryPolicy(max_attempts=3, base_delay=7))


@declared_policy.on  # a declared channel without a handler would fail `manage.py check`
def _declared_policy(event: Event) -> None:
    pass


@not_ready.on
def _not_ready(event: Event) -> None:
    raise RetryLater("the order row is not visible yet", delay=30)


@hopeless.on
def _hopeless(event: Event) -> None:
    raise GiveUp("this input can never succeed")


@slow_python.on
def _slow_python(event: Event) -> None:
    Tag.objects.create(name=f"slow-{event.id}")
    time.sleep(5)


@slow_query.on
def _slow_query(event: Event) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(5)")


def run_all() -> list:
    return Executor("test-worker").run_batch(Scope(), 1000)


def put(channel: str) -> EventRecord:
    return EventRecord.objects.create(channel=channel, operation="INSERT", table_name="x", new={})


def no_wait_retries(max_attempts: int = 3) -> override_settings:
    return override_settings(
        EVENTBUS={
            "LISTENER_MODULES": ["listeners"],
            "RETRY": {"max_attempts": max_attempts, "base_delay": 0, "jitter": False},
        },
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
    )


def test_a_failing_event_is_retried_until_it_succeeds(
    post: Post, reader: User, smtp: SMTPServer
) -> None:
    Comment.objects.create(post=post, author=reader, body="eventually")
    with no_wait_retries(), override_settings(EMAIL_PORT=free_port()):  # mail server down
        run_all()
        run_all()
    record = EventRecord.objects.get(channel="comment_created")
    assert (record.state, record.attempts) == ("failed", 2)
    with no_wait_retries(), override_settings(EMAIL_PORT=smtp.port):  # back up
        run_all()
    record.refresh_from_db()
    assert (record.state, record.attempts) == ("done", 3)
    assert [e["attempt"] for e in record.errors] == [1, 2]
    assert len(smtp.mailbox.snapshot()) == 1


def test_after_the_last_attempt_the_event_is_dead_and_kept(post: Post, reader: User) -> None:
    Comment.objects.create(post=post, author=reader, body="never delivered")
    with no_wait_retries(max_attempts=2), override_settings(EMAIL_PORT=free_port()):
        run_all()
        run_all()
        assert run_all() == [], "a dead event is never claimed again"
    record = EventRecord.objects.get(channel="comment_created")
    assert (record.state, record.attempts) == ("dead", 2)
    assert record.new["body"] == "never delivered", "its payload is kept"
    assert record.finished_at is not None
    assert [e["attempt"] for e in record.errors] == [1, 2]
    assert all(e["error"].startswith("ConnectionRefusedError") for e in record.errors)
    assert all("Traceback" not in e["error"] and "File " in e["error"] for e in record.errors)


def test_dead_events_do_not_block_the_others(post: Post, author: User) -> None:
    put("test_hopeless")
    Post.objects.create(title="after", body="one two", author=author)
    run_all()
    assert dict(EventRecord.objects.values_list("channel", "state")) == {
        "test_hopeless": "dead",
        "post_created": "done",
    }


def test_retry_later_reschedules_with_the_delay_it_asks_for() -> None:
    record = put("test_not_ready")
    before = timezone.now()
    run_all()
    record.refresh_from_db()
    assert record.state == "failed"
    assert record.last_error.startswith("RetryLater: the order row is not visible yet")
    assert before + timedelta(seconds=29) < record.run_after < before + timedelta(seconds=40)


def test_a_whole_second_delay_and_a_dead_event_in_one_batch_are_both_recorded() -> None:
    waiting, hopeless = put("test_not_ready"), put("test_hopeless")  # delay=30: an int
    outcomes = run_all()
    assert [o.status for o in outcomes] == ["failed", "dead"]
    waiting.refresh_from_db()
    hopeless.refresh_from_db()
    assert (waiting.state, hopeless.state) == ("failed", "dead")


def test_give_up_makes_the_event_dead_at_once() -> None:
    record = put("test_hopeless")
    run_all()
    record.refresh_from_db()
    assert (record.state, record.attempts) == ("dead", 1)
    assert record.last_error.startswith("GiveUp: this input can never succeed")


def test_a_handler_running_too_long_is_stopped_and_its_writes_undone() -> None:
    record = put("test_slow_python")
    started = time.monotonic()
    run_all()
    assert time.monotonic() - started < 2
    record.refresh_from_db()
    assert (record.state, record.attempts) == ("failed", 1)
    assert record.last_error.startswith("HandlerTimeout: handler ran longer than 0.3 s")
    assert not Tag.objects.filter(name__startswith="slow-").exists()


def test_a_timed_out_query_is_cancelled_and_the_batch_goes_on(author: User) -> None:
    slow = put("test_slow_query")
    Post.objects.create(title="next", body="a b c", author=author)
    started = time.monotonic()
    outcomes = run_all()
    assert time.monotonic() - started < 2
    assert [o.status for o in outcomes] == ["failed", "done"]
    slow.refresh_from_db()
    assert slow.last_error.startswith("HandlerTimeout")
    assert Post.objects.get().word_count == 3, "the same connection carried on"


def test_policy_precedence_settings_over_declaration_over_defaults() -> None:
    assert resolve("test_declared_policy").retry == RetryPolicy(max_attempts=3, base_delay=7)
    assert resolve("test_slow_python").timeout == 0.3
    assert resolve("comment_created").retry == RetryPolicy()
    with override_settings(
        EVENTBUS={
            "RETRY": {"max_attempts": 4},
            "HANDLER_TIMEOUT": 9,
            "CHANNELS": {"test_declared_policy": {"retry": {"base_delay": 1}, "timeout": 2}},
        }
    ):
        assert resolve("comment_created").retry == RetryPolicy(max_attempts=4)
        assert resolve("comment_created").timeout == 9
        overridden = resolve("test_declared_policy")
        assert overridden.retry == RetryPolicy(max_attempts=3, base_delay=1)
        assert overridden.timeout == 2
    with (
        override_settings(EVENTBUS={"CHANNELS": {"comment_created": {"retries": 3}}}),
        pytest.raises(ValueError, match="unknown keys"),
    ):
        resolve("comment_created")


def test_a_deploy_may_set_a_channels_isolation_in_settings_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """isolation="batch" without touching the code: for a handler whose failures are rare
    (one savepoint per batch); an unknown value is refused with its name."""
    assert resolve("comment_created").isolation == "event"
    with override_settings(EVENTBUS={"CHANNELS": {"comment_created": {"isolation": "batch"}}}):
        assert resolve("comment_created").isolation == "batch"
    monkeypatch.setenv("EVENTBUS_CHANNELS", '{"comment_created": {"isolation": "batch"}}')
    with override_settings(EVENTBUS={"CHANNELS": {"post_created": {"timeout": 5}}}):
        assert resolve("comment_created").isolation == "batch"
        assert resolve("post_created").timeout == 5, "the settings' other entries stay"
    monkeypatch.setenv("EVENTBUS_CHANNELS", '{"comment_created": {"isolation": "none"}}')
    with pytest.raises(ValueError, match="'none' is not 'event' or 'batch'"):
        resolve("comment_created")


def test_bad_policies_are_refused_at_declaration() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="schedule"):
        RetryPolicy(schedule="linear")
    with pytest.raises(ValueError, match="needs a key"):
        Channel("test_ordered_without_key", ordered=True)
