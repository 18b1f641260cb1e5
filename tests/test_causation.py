"""Causation: every event written while a handler runs names the event that caused it,
and shares its root's collection; a request can make its writes one collection."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

import eventbus
from blog.models import Post, Tag
from eventbus import Channel, Event
from eventbus.models import EventRecord
from eventbus.operating import status
from eventbus.testing import run_events

pytestmark = pytest.mark.django_db

# root -> child (published) -> grandchild (published), in both isolation modes
root = Channel("cause_root")
child = Channel("cause_child", isolation="batch")
grandchild = Channel("cause_grandchild")
# a handler whose own write fires a channel trigger (post_tags_changed)
tags_a_post = Channel("cause_tags_a_post", isolation="batch")
# fails its first attempt after publishing, then publishes again
flaky = Channel("cause_flaky")
# publishes, then dies (its event is undone); its on_dead hook publishes a report
doomed = Channel("cause_doomed")
report = Channel("cause_report")


@root.on
def _root(event: Event) -> None:
    child.publish({"from": event.id})


@child.on
def _child(event: Event) -> None:
    grandchild.publish({"from": event.id})


@grandchild.on
def _grandchild(event: Event) -> None:
    pass


@tags_a_post.on
def _tag(event: Event) -> None:
    post = Post.objects.get(pk=event.row["post"])
    post.tags.add(Tag.objects.create(name=f"tag-of-{event.id}"))


@flaky.on
def _flaky(event: Event) -> None:
    report.publish({"attempt": event.attempt})
    if event.attempt == 1:
        raise RuntimeError("first attempt fails after publishing")


@doomed.on
def _doomed(event: Event) -> None:
    report.publish({"undone": event.id})
    raise eventbus.GiveUp("no")


@doomed.on_dead
def _doomed_report(event: Event, error: str) -> None:
    report.publish({"dead": event.id})


@report.on
def _report(event: Event) -> None:
    pass


def events_of(channel: str) -> list[EventRecord]:
    return list(EventRecord.objects.filter(channel=channel).order_by("id"))


def test_published_events_name_their_cause_and_share_the_roots_collection() -> None:
    first, second = root.publish({}), root.publish({})
    run_events()
    children, grandchildren = events_of("cause_child"), events_of("cause_grandchild")
    assert sorted(c.caused_by for c in children) == [first, second]
    for c in children:
        assert c.correlation_id == c.caused_by  # the root's own id is its collection
    for g in grandchildren:
        parent = EventRecord.objects.get(pk=g.caused_by)
        assert parent.channel == "cause_child"
        assert g.correlation_id == parent.correlation_id
    roots = EventRecord.objects.filter(channel="cause_root")
    assert {(r.caused_by, r.correlation_id) for r in roots} == {(None, None)}


def test_trigger_events_of_a_handlers_writes_name_the_handlers_event(author: User) -> None:
    posts = [Post.objects.create(title=f"p{i}", body="b", author=author) for i in range(3)]
    causes = {tags_a_post.publish({"post": p.pk}): p for p in posts}
    run_events(["cause_tags_a_post"])
    for cause, post in causes.items():
        [link] = EventRecord.objects.filter(channel="post_tags_changed", key=str(post.pk))
        assert (link.caused_by, link.correlation_id) == (cause, cause)


def test_a_failed_attempts_events_are_undone_and_the_retry_names_the_cause() -> None:
    cause = flaky.publish({})
    run_events(["cause_flaky"], retries=True)
    [kept] = events_of("cause_report")
    assert kept.new == {"attempt": 2}
    assert (kept.caused_by, kept.correlation_id) == (cause, cause)


def test_an_on_dead_hooks_events_are_caused_by_the_dead_event() -> None:
    cause = doomed.publish({})
    run_events(["cause_doomed"])
    [kept] = events_of("cause_report")
    assert kept.new == {"dead": cause}
    assert (kept.caused_by, kept.correlation_id) == (cause, cause)


def test_events_outside_handlers_have_no_cause(author: User) -> None:
    Post.objects.create(title="t", body="b", author=author)
    for record in EventRecord.objects.all():
        assert (record.caused_by, record.correlation_id) == (None, None)


def test_a_request_makes_its_writes_and_their_consequences_one_collection(author: User) -> None:
    with eventbus.collection() as made:
        post = Post.objects.create(title="t", body="one two", author=author)
        post.tags.add(Tag.objects.create(name="python"))
        root.publish({"post": post.pk})
    assert not EventRecord.objects.filter(pk=made).exists()  # a reserved id, no event's
    Post.objects.create(title="outside", body="b", author=author)  # after the block
    run_events()
    found = status.collection(made)
    assert {e["channel"] for e in found["events"]} == {
        "post_created",
        "post_tags_changed",
        "cause_root",
        "cause_child",
        "cause_grandchild",
    }
    assert found["state"] == "done"
    assert status.collection_id(found["events"][-1]["id"]) == made


def test_a_collection_opened_in_a_transaction_ends_with_its_block(author: User) -> None:
    with transaction.atomic():
        with eventbus.collection() as made:
            root.publish({})
        after = root.publish({})
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('eventbus.correlation', true)")
            assert cursor.fetchone()[0] in ("", None)
    assert EventRecord.objects.get(pk=after).correlation_id is None
    assert EventRecord.objects.filter(correlation_id=made).count() == 1


def test_a_collections_state_is_its_worst_members() -> None:
    cause = doomed.publish({})
    assert status.collection(cause)["state"] == "pending"
    run_events(["cause_doomed"])
    assert status.collection(cause)["state"] == "dead"  # the report is pending: dead wins
    run_events(["cause_report"])
    assert status.collection(cause)["state"] == "dead"
    assert status.worst(["done", "pending", "failed"]) == "failed"
