"""Operators reach every event in the table: by a channel the code no longer declares, by
key, in full; and they can clean a removed channel's events up without a handler."""

from __future__ import annotations

import json
import uuid
from argparse import ArgumentParser, _SubParsersAction

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management import load_command_class

from blog.models import Comment, Post
from eventbus.models import EventRecord
from tests.support import SMTPServer, database_url, manage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REMOVED = "order_shipped"  # a channel an older release declared; only its rows are left


def put(state: str, channel: str = REMOVED, **fields: object) -> EventRecord:
    return EventRecord.objects.create(
        channel=channel, operation="INSERT", table_name="shop_order", new={}, state=state, **fields
    )


def listed(*args: str) -> list[dict]:
    result = manage("events", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_events_lists_and_retries_a_channel_that_only_the_table_names() -> None:
    dead = put("dead", attempts=5, last_error="OrderGone")
    queue = put("failed", channel=f"{REMOVED}:notify_warehouse")  # one subscription's queue
    put("dead", channel="comment_created")
    # a channel's name stands for its own queue and those of its subscriptions
    assert [e["id"] for e in listed("--channel", REMOVED)] == [queue.pk, dead.pk]
    assert [e["id"] for e in listed("--channel", f"{REMOVED}:notify_warehouse")] == [queue.pk]

    retried = manage("events", "retry", "--channel", REMOVED)
    assert retried.returncode == 0, retried.stderr
    assert f"re-queued 2 event(s): {dead.pk}, {queue.pk}" in retried.stdout, "no handler needed"
    assert EventRecord.objects.get(pk=dead.pk).state == "pending"
    assert EventRecord.objects.filter(channel="comment_created", state="dead").count() == 1


@pytest.mark.parametrize(
    "command",
    [
        ("events",),
        ("events", "retry"),
        ("events", "purge", "--state", "dead"),
        ("recover",),
    ],
)
def test_a_name_neither_declared_nor_in_the_table_is_an_error_listing_those_that_exist(
    command: tuple[str, ...],
) -> None:
    put("dead")
    unknown = manage(*command, "--channel", "no_such_channel")
    assert unknown.returncode != 0
    assert "unknown channel(s): no_such_channel" in unknown.stderr
    assert REMOVED in unknown.stderr and "comment_created" in unknown.stderr, unknown.stderr
    malformed = manage(*command, "--channel", "Orders;drop")
    assert malformed.returncode != 0 and "not a channel name: Orders;drop" in malformed.stderr


def test_purge_cleans_a_removed_channel_in_batches_and_unfinished_events_only_with_yes() -> None:
    dead = [put("dead") for _ in range(5)]
    pending, failed = put("pending"), put("failed")
    kept = put("dead", channel="comment_created")

    purged = manage("events", "purge", "--channel", REMOVED, "--state", "dead", "--batch-size", "2")
    assert purged.returncode == 0, purged.stderr
    assert f"purged 5 dead event(s) of channel {REMOVED}" in purged.stdout
    assert not EventRecord.objects.filter(pk__in=[e.pk for e in dead]).exists()
    assert EventRecord.objects.filter(pk__in=[pending.pk, failed.pk, kept.pk]).count() == 3

    unfinished = (
        "events",
        "purge",
        "--channel",
        REMOVED,
        "--state",
        "pending",
        "--state",
        "failed",
    )
    refused = manage(*unfinished)
    assert refused.returncode != 0
    assert "add --yes to delete these 2 event(s)" in refused.stderr
    assert f"{REMOVED:<28} pending         1" in refused.stdout, "shows what it would delete"
    dry = manage(*unfinished, "--dry-run")
    assert dry.returncode == 0 and "total: 2 (dry run: nothing changed)" in dry.stdout
    assert EventRecord.objects.filter(pk__in=[pending.pk, failed.pk]).count() == 2

    with psycopg.connect(database_url()) as worker:  # a listener is handling the failed one
        worker.execute("SELECT 1 FROM eventbus_event WHERE id = %s FOR UPDATE", [failed.pk])
        confirmed = manage(*unfinished, "--yes", timeout=30)  # never waits for it
    assert confirmed.returncode == 0, confirmed.stderr
    assert f"purged 1 pending/failed event(s) of channel {REMOVED}" in confirmed.stdout
    assert "left 1 event(s): a listener is handling them right now" in confirmed.stderr
    assert set(EventRecord.objects.values_list("pk", flat=True)) == {failed.pk, kept.pk}

    assert "say which events" in manage("events", "purge", "--state", "dead").stderr


def test_key_selects_what_events_lists_retries_and_purges() -> None:
    order = str(uuid.uuid4())
    mine = [put("dead", key=order), put("dead", key=order)]
    other = put("dead", key=str(uuid.uuid4()))
    assert [e["id"] for e in listed("--key", order)] == [mine[1].pk, mine[0].pk]

    retried = manage("events", "retry", "--key", order)
    assert f"re-queued 2 event(s): {mine[0].pk}, {mine[1].pk}" in retried.stdout
    assert EventRecord.objects.get(pk=other.pk).state == "dead"

    EventRecord.objects.filter(pk__in=[e.pk for e in mine]).update(state="dead")
    purged = manage("events", "purge", "--key", order, "--state", "dead")
    assert purged.returncode == 0, purged.stderr
    assert f"purged 2 dead event(s) with key {order}" in purged.stdout
    assert list(EventRecord.objects.values_list("pk", flat=True)) == [other.pk]


def test_the_table_shows_whole_keys_and_the_whole_first_line_of_the_error() -> None:
    key = str(uuid.uuid4())
    first_line = "CarrierRejected: " + "the carrier refused the parcel, " * 6 + "end of line"
    event = put("dead", key=key, last_error=f"{first_line}\nTraceback (most recent call last):")
    lines = manage("events", "--channel", REMOVED).stdout.splitlines()
    [row] = [line for line in lines if line.startswith(str(event.pk))]
    assert key in row.split()
    assert row.endswith(first_line)
    assert "Traceback" not in row


def test_recover_of_a_channel_without_a_handler_here_runs_nothing_and_says_so() -> None:
    pending, dead = put("pending"), put("dead", attempts=3)
    named = manage("recover", "--channel", REMOVED)
    assert named.returncode == 1, "asked for events it cannot run"
    assert f"channel {REMOVED}: 1 event(s) not replayed: no handler for it" in named.stderr
    assert f"events purge --channel {REMOVED}" in named.stderr, "names a remedy"
    assert "recover --dead" not in named.stderr
    dead_too = manage("recover", "--dead", "--channel", REMOVED, "--dry-run")
    assert f"channel {REMOVED}: 1 event(s) not replayed" in dead_too.stderr

    everything = manage("recover")
    assert everything.returncode == 0, "another release's listeners may handle it"
    assert f"channel {REMOVED}: 1 event(s) not replayed" in everything.stderr
    pending.refresh_from_db()
    dead.refresh_from_db()
    assert (pending.state, pending.attempts, dead.state, dead.attempts) == ("pending", 0, "dead", 3)


def test_recover_key_replays_only_that_keys_events(
    author: User, reader: User, smtp: SMTPServer
) -> None:
    first, second = (Post.objects.create(title=t, body="b", author=author) for t in "ab")
    for post in (first, second):
        Comment.objects.create(post=post, author=reader, body="hi")
    result = manage("recover", "--channel", "comment_created", "--key", str(first.pk), smtp=smtp)
    assert result.returncode == 0, result.stdout + result.stderr
    states = dict(EventRecord.objects.filter(channel="comment_created").values_list("key", "state"))
    assert states == {str(first.pk): "done", str(second.pk): "pending"}


def parsers(parser: ArgumentParser) -> list[ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, _SubParsersAction):
            for sub in action.choices.values():
                found += parsers(sub)
    return found


@pytest.mark.parametrize("name", ["events", "recover", "listen", "eventbus_health"])
def test_every_option_of_the_operator_commands_says_what_it_does(name: str) -> None:
    command = load_command_class("eventbus", name)
    for parser in parsers(command.create_parser("manage.py", name)):
        bare = [
            "/".join(a.option_strings) or a.dest
            for a in parser._actions
            if not isinstance(a, _SubParsersAction) and not a.help
        ]
        assert not bare, f"{parser.prog}: options without help: {bare}"


def test_a_removed_channel_with_subscriptions_is_named_by_its_channel_name() -> None:
    for queue in ("gone_fanned:email", "gone_fanned:index"):
        EventRecord.objects.create(
            channel=queue, operation="INSERT", table_name="t", key="1", state="dead"
        )
    from eventbus.management.commands import _options

    assert _options.stored_channels(["gone_fanned"], "default") == (
        "gone_fanned:email",
        "gone_fanned:index",
    )
    assert _options.stored_channels(["gone_fanned:index"], "default") == ("gone_fanned:index",)
