"""Pause and resume: a paused channel's events wait, nothing of it runs, nothing is lost."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from blog.models import Post, PostTag, Tag
from eventbus.models import EventRecord, PauseRecord
from tests.support import Listener, manage, wait_until

PAUSED = "post_tags_changed"
# Long enough that only a NOTIFY (the pause's, the resume's wake-up) can explain a
# listener acting within the specs' deadlines.
POLL = "30"


def tag_events() -> list[EventRecord]:
    return list(EventRecord.objects.filter(channel=PAUSED).order_by("id"))


def post_done(post: Post) -> bool:
    return EventRecord.objects.filter(
        channel="post_created", key=str(post.pk), state="done"
    ).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize("slots", ["1", "3"], ids=["one at a time", "handler slots"])
def test_a_paused_channel_waits_through_a_restart_and_resuming_drains_it_once(
    start_listener: Callable[..., Listener], author: User, slots: str
) -> None:
    listener = start_listener("--poll-interval", POLL, "--concurrency", slots, workers=1)
    paused = manage("events", "pause", PAUSED)
    assert paused.returncode == 0, paused.stderr
    assert f"paused {PAUSED}" in paused.stdout
    wait_until(
        lambda: f"not claiming paused {PAUSED}" in listener.log(),
        20,
        what=f"the listener to take the pause up; log:\n{listener.log()}",
    )

    tag = Tag.objects.create(name="paused")
    posts = [Post.objects.create(title=f"p{i}", body="a b", author=author) for i in range(3)]
    PostTag.objects.bulk_create([PostTag(post=p, tag=tag) for p in posts])
    # A later event of another channel being handled proves the listener alive and
    # claiming since the paused events were committed: claims go in id order.
    later = Post.objects.create(title="later", body="c d e", author=author)
    wait_until(lambda: post_done(later), 20, what="the later post_created event done")
    assert [(e.state, e.attempts) for e in tag_events()] == [("pending", 0)] * 3
    tag.refresh_from_db()
    assert tag.post_count == 0, "no handler of the paused channel ran"

    listener.stop()  # killed: the pause is a row, not a listener's memory
    restarted = start_listener("--poll-interval", POLL, "--concurrency", slots, workers=1)
    wait_until(
        lambda: f"not claiming paused {PAUSED}" in restarted.log(),
        20,
        what=f"the restarted listener to read the pause; log:\n{restarted.log()}",
    )
    after = Post.objects.create(title="after restart", body="f g", author=author)
    wait_until(lambda: post_done(after), 20, what="the post written after the restart done")
    assert [(e.state, e.attempts) for e in tag_events()] == [("pending", 0)] * 3

    resumed = manage("events", "resume", PAUSED)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {PAUSED}" in resumed.stdout
    wait_until(
        lambda: all(e.state == "done" for e in tag_events()),
        20,  # under the poll interval: the resume's wake-up drained them
        what=f"the paused events handled after the resume; log:\n{restarted.log()}",
    )
    assert [e.attempts for e in tag_events()] == [1, 1, 1], "each handled exactly once"
    tag.refresh_from_db()
    assert tag.post_count == 3
    assert not PauseRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_recover_leaves_a_paused_channel_alone_and_says_so(author: User) -> None:
    tag = Tag.objects.create(name="t")
    post = Post.objects.create(title="t", body="one two", author=author)
    PostTag.objects.create(post=post, tag=tag)
    call_command("events", "pause", PAUSED)
    named = manage("recover", "--channel", PAUSED)
    assert named.returncode == 1
    assert (
        f"channel {PAUSED}: 1 event(s) not replayed: paused. "
        f"Resume it first: ./manage.py events resume {PAUSED}"
    ) in named.stderr
    everything = manage("recover")
    assert everything.returncode == 0, everything.stdout + everything.stderr
    assert "post_created                 handled         1" in everything.stdout
    assert [(e.state, e.attempts) for e in tag_events()] == [("pending", 0)]


@pytest.mark.django_db
def test_pause_names_what_exists_and_resume_says_what_holds_a_subscription() -> None:
    with pytest.raises(CommandError, match="unknown channel post_tagz: neither declared"):
        call_command("events", "pause", "post_tagz")
    call_command("events", "pause", "comment_created")
    with pytest.raises(CommandError, match="comment_created:x is paused through its channel"):
        call_command("events", "resume", "comment_created:x")
    call_command("events", "resume", "comment_created")
    assert not PauseRecord.objects.exists()
