"""`./manage.py recover`: replays what was never handled or failed, exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.db.models import Value
from django.db.models.functions import Concat
from django.utils import timezone

from blog.models import Comment, Post, PostTag, Tag
from eventbus.models import EventRecord
from tests.support import Listener, SMTPServer, manage, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def states() -> Counter[tuple[str, str]]:
    return Counter(EventRecord.objects.values_list("channel", "state"))


def test_recover_replays_events_written_while_no_listener_ran(
    post: Post, reader: User, smtp: SMTPServer
) -> None:
    Comment.objects.bulk_create([Comment(post=post, author=reader, body=str(i)) for i in range(30)])
    result = manage("recover", smtp=smtp)
    assert result.returncode == 0, result.stderr
    assert "comment_created              handled        30" in result.stdout
    assert "post_created                 handled         1" in result.stdout
    assert "still failed or dead: 0" in result.stdout
    assert states() == {("comment_created", "done"): 30, ("post_created", "done"): 1}
    assert len(set(smtp.mailbox.event_ids())) == len(smtp.mailbox.event_ids()) == 30


def test_recover_exits_1_while_events_still_fail_then_replays_them(
    post: Post, reader: User, smtp: SMTPServer
) -> None:
    Comment.objects.bulk_create([Comment(post=post, author=reader, body=str(i)) for i in range(5)])
    smtp.stop()  # the mail server is down: every comment email fails
    failing = manage("recover", smtp=smtp)
    assert failing.returncode == 1
    assert "comment_created              failed          5" in failing.stdout
    assert "still failed or dead: 5" in failing.stdout
    assert states() == {("comment_created", "failed"): 5, ("post_created", "done"): 1}

    dry = manage("recover", "--dry-run", smtp=smtp)
    assert dry.returncode == 0
    assert "comment_created              failed          5" in dry.stdout
    assert "nothing changed" in dry.stdout
    assert states()[("comment_created", "failed")] == 5

    up = SMTPServer().start()  # the mail server is back
    try:
        fixed = manage("recover", "--channel", "comment_created", smtp=up)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert "comment_created              handled         5" in fixed.stdout
        assert states() == {("comment_created", "done"): 5, ("post_created", "done"): 1}
        assert set(EventRecord.objects.values_list("attempts", flat=True)) == {1, 2}
        assert len(up.mailbox.event_ids()) == 5
    finally:
        up.stop()


def test_recover_filters_by_channel_and_since(post: Post, reader: User, author: User) -> None:
    Comment.objects.create(post=post, author=author, body="old")
    cutoff = timezone.now()
    EventRecord.objects.update(created_at=cutoff - timezone.timedelta(days=1))
    tag = Tag.objects.create(name="new")
    post.tags.add(tag)
    result = manage("recover", "--since", cutoff.isoformat())
    assert result.returncode == 0, result.stderr
    assert states() == {
        ("post_created", "pending"): 1,
        ("comment_created", "pending"): 1,
        ("post_tags_changed", "done"): 1,
    }
    only_posts = manage("recover", "--channel", "post_created")
    assert only_posts.returncode == 0
    assert states()[("post_created", "done")] == 1
    assert states()[("comment_created", "pending")] == 1


def test_recover_rejects_unknown_channels_and_bad_timestamps() -> None:
    unknown = manage("recover", "--channel", "no_such_channel")
    assert unknown.returncode != 0
    assert "unknown channel(s): no_such_channel" in unknown.stderr
    assert "comment_created" in unknown.stderr, "lists the declared channels"
    bad = manage("recover", "--since", "yesterday-ish")
    assert bad.returncode != 0
    assert "--since: not an ISO date or date-time" in bad.stderr


def test_recover_beside_running_listeners_handles_each_event_once(
    start_listener: Callable[..., Listener], author: User
) -> None:
    tags = Tag.objects.bulk_create([Tag(name=f"t{i}") for i in range(4)])
    posts = Post.objects.bulk_create(
        [Post(title=str(i), body="b", author=author) for i in range(1500)]
    )
    PostTag.objects.bulk_create([PostTag(post=p, tag=t) for p in posts for t in tags])
    start_listener("--processes", "2", "--batch-size", "25")
    result = manage("recover", "--batch-size", "25")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    wait_until(lambda: not EventRecord.objects.exclude(state="done").exists(), 60)
    assert sorted(Tag.objects.values_list("post_count", flat=True)) == [1500] * 4
    assert set(EventRecord.objects.values_list("attempts", flat=True)) == {1}


def test_recover_dead_replays_dead_events_one_channel_or_one_id_at_a_time(
    post: Post, reader: User, smtp: SMTPServer
) -> None:
    Comment.objects.bulk_create([Comment(post=post, author=reader, body=str(i)) for i in range(3)])
    manage("recover")  # handles the post
    EventRecord.objects.filter(channel="comment_created").update(state="dead", attempts=10)
    first, second, third = EventRecord.objects.filter(channel="comment_created").order_by("id")

    plain = manage("recover", smtp=smtp)
    assert "(nothing)" in plain.stdout, "dead events are replayed only on request"
    assert plain.returncode == 0

    one = manage("recover", "--dead", "--id", str(first.pk), smtp=smtp)
    assert one.returncode == 0, "only that id is in scope"
    assert "comment_created              handled         1" in one.stdout
    assert "still failed or dead: 0" in one.stdout
    dry = manage("recover", "--dead", "--dry-run").stdout
    assert "comment_created              dead            2" in dry, dry
    assert smtp.mailbox.event_ids() == [first.pk]

    rest = manage("recover", "--dead", "--channel", "comment_created", smtp=smtp)
    assert rest.returncode == 0, rest.stdout
    assert sorted(smtp.mailbox.event_ids()) == [first.pk, second.pk, third.pk]
    assert set(EventRecord.objects.values_list("state", flat=True)) == {"done"}


def test_a_dead_event_that_fails_again_on_replay_stays_dead(post: Post, reader: User) -> None:
    malformed = EventRecord.objects.create(  # a comment event without its row: never runs
        channel="comment_created", operation="INSERT", table_name="x", new={}, state="dead"
    )
    result = manage("recover", "--dead")
    assert result.returncode == 1
    assert "comment_created              dead            1" in result.stdout
    malformed.refresh_from_db()
    assert malformed.state == "dead"


def edit(post: Post) -> None:
    """Append one word to the body: one post_edited event (an ordered channel, key = post)."""
    Post.objects.filter(pk=post.pk).update(body=Concat("body", Value(" w")))


def test_recover_comes_back_for_edits_held_back_behind_an_older_edit_of_their_post(
    author: User,
) -> None:
    a = Post.objects.create(title="a", body="one", author=author)
    b = Post.objects.create(title="b", body="one", author=author)
    for post in (a, a, b):  # a's second edit waits for its first: same key
        edit(post)
    result = manage("recover", "--channel", "post_edited")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "post_edited                  handled         3" in result.stdout
    assert "still failed or dead: 0; still pending: 0" in result.stdout
    assert states()[("post_edited", "done")] == 3
    a.refresh_from_db()
    assert a.word_count == 3, "a's edits applied in order: the last one counts"


def test_recover_counts_and_fails_on_edits_it_must_leave_held_back(author: User) -> None:
    post = Post.objects.create(title="a", body="one", author=author)
    edit(post)
    edit(post)
    first, second = EventRecord.objects.filter(channel="post_edited").order_by("id")
    only_second = manage("recover", "--id", str(second.pk))
    assert only_second.returncode == 1, "the first edit is out of scope, so the second waits"
    assert "still failed or dead: 0; still pending: 1" in only_second.stdout
    assert EventRecord.objects.get(pk=second.pk).state == "pending"

    failing = manage("recover", "--channel", "post_edited", env={"EVENTBUS_FAULT_RATE": "1"})
    assert failing.returncode == 1
    assert "still failed or dead: 1; still pending: 1" in failing.stdout
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, first.attempts) == ("failed", 1), "one attempt per run, no loop"
    assert (second.state, second.attempts) == ("pending", 0), "never ran ahead of the first"
