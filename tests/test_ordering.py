"""Ordered channels: one key's events one at a time in commit order; other keys in parallel."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

import channels
from blog.models import Post
from eventbus.models import EventRecord
from eventbus.running.executor import Executor
from eventbus.running.worker import Worker, WorkerOptions
from listeners.posts import word_count
from tests.support import Listener, database_url, wait_until


def edit(post: Post) -> None:
    """Append one word: in commit order, a post's bodies grow by one word per edit."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute("UPDATE blog_post SET body = body || ' w' WHERE id = %s", [post.pk])


def drain() -> list:
    """Run batches until nothing is claimable, as a worker would."""
    scope = Worker(WorkerOptions(channels=None, batch_size=100, poll_interval=1)).scope
    outcomes, executor = [], Executor("test-worker")
    while batch := executor.run_batch(scope, 100):
        outcomes += batch
    return outcomes


@pytest.mark.django_db(transaction=True)
def test_a_failing_event_holds_back_only_its_own_key(author: User) -> None:
    a = Post.objects.create(title="a", body="one", author=author)
    b = Post.objects.create(title="b", body="one", author=author)
    drain()
    for post in (a, b, a, b):
        edit(post)
    a_first = EventRecord.objects.filter(channel="post_edited", key=str(a.pk)).earliest("id")
    # a's first edit failed and waits an hour for its retry:
    EventRecord.objects.filter(pk=a_first.pk).update(
        state="failed", attempts=1, run_after=timezone.now() + timedelta(hours=1)
    )
    drain()
    states = defaultdict(list)
    for key, state in (
        EventRecord.objects.filter(channel="post_edited").order_by("id").values_list("key", "state")
    ):
        states[key].append(state)
    assert states[str(b.pk)] == ["done", "done"], "the other key ran"
    assert states[str(a.pk)] == ["failed", "pending"], "a's later edit waits behind its first"

    EventRecord.objects.filter(pk=a_first.pk).update(run_after=timezone.now())
    drain()
    assert set(EventRecord.objects.values_list("state", flat=True)) == {"done"}
    a.refresh_from_db()
    assert a.word_count == 3, "the edits applied in order: the last one counts"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(
    "slots",
    [(), ("--concurrency", "4")],
    ids=["processes", "processes-with-handler-slots"],
)
def test_edits_are_handled_in_commit_order_across_processes(
    start_listener: Callable[..., Listener], author: User, slots: tuple[str, ...]
) -> None:
    posts = [Post.objects.create(title=str(i), body="start", author=author) for i in range(4)]
    start_listener("--processes", "2", "--batch-size", "2", *slots, workers=2)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(database_url(), autocommit=True) as conn:
            for _ in range(60):
                post = rng.choice(posts)
                conn.execute("UPDATE blog_post SET body = body || ' w' WHERE id = %s", [post.pk])

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(
        lambda: not EventRecord.objects.exclude(state="done").exists(), 60, what="all edits handled"
    )

    for post in posts:
        events = list(
            EventRecord.objects.filter(channel="post_edited", key=str(post.pk)).order_by("id")
        )
        counts = [word_count(e.new["body"]) for e in events]
        assert counts == list(range(2, 2 + len(events))), "ids follow commit order"
        finished = [e.finished_at for e in events]
        assert finished == sorted(finished), "handled one at a time, in that order"
        post.refresh_from_db()
        assert post.word_count == counts[-1]
    workers = set(
        EventRecord.objects.filter(channel="post_edited").values_list("worker", flat=True)
    )
    assert len(workers) == 2, "both processes took part"


def waiting_for_an_advisory_lock() -> bool:
    with psycopg.connect(database_url(), autocommit=True) as conn:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return conn.execute(query).fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_publishers_of_one_key_take_turns_so_handling_follows_commit_order(author: User) -> None:
    post = Post.objects.create(title="p", body="start", author=author)
    second_committed = threading.Event()

    def publish_second() -> None:
        try:
            with transaction.atomic():
                channels.post_edited.publish({"id": post.pk, "body": "one two three"}, key=post.pk)
            second_committed.set()
        finally:
            connection.close()  # this thread's own connection

    second = threading.Thread(target=publish_second)
    with transaction.atomic():
        channels.post_edited.publish({"id": post.pk, "body": "one two"}, key=post.pk)
        second.start()
        wait_until(
            lambda: second_committed.is_set() or waiting_for_an_advisory_lock(),
            what="the second publisher to commit or to wait",
        )
        assert not second_committed.is_set(), "the second publisher waits for the first"
    second.join(10)
    assert second_committed.is_set()
    drain()
    post.refresh_from_db()
    assert post.word_count == 3, "the edit committed last is the one handled last"
