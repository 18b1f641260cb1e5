"""Several handlers per channel: each subscription has its own events and its own fate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, models, transaction

from eventbus import INSERT, UPDATE, Channel, Event, RetryPolicy
from eventbus.declaring import registry, wiring
from eventbus.declaring.policies import resolve
from eventbus.models import EventRecord
from eventbus.running.executor import Executor
from eventbus.sql import Scope
from tests import fanout
from tests.support import Listener, wait_until

pytestmark = pytest.mark.django_db

calls: Counter[str] = Counter()
failing: set[str] = set()  # subscriptions whose handler raises

fanned = Channel(
    "test_fanned",
    operations=[INSERT, UPDATE],
    key="label",
    subscriptions=["email_author", "search_index"],
    retry=RetryPolicy(max_attempts=3, base_delay=0),
)
announced = Channel("test_announced", operations=(), subscriptions=["audit", "notify"])


class Gadget(models.Model):
    """A table of the test's own, with the fanned channel's triggers."""

    label = models.TextField()

    class Meta:
        app_label = "test_subscriptions"
        db_table = "test_subscriptions_gadget"
        triggers = fanned.triggers()


def _record(event: Event) -> None:
    calls[f"{event.subscription}:{event.id}"] += 1
    if event.subscription in failing:
        raise RuntimeError(f"{event.subscription} is down")


@fanned.on("email_author")
def _email_author(event: Event) -> None:
    _record(event)


@fanned.on  # a bare decorator takes the subscription of the function's name
def search_index(event: Event) -> None:
    _record(event)


@announced.on("audit", timeout=7, retry=RetryPolicy(max_attempts=9))
def _audit(event: Event) -> None:
    _record(event)


@announced.on("notify")
def _notify(event: Event) -> None:
    _record(event)


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    failing.clear()


@pytest.fixture
def gadgets() -> Iterator[None]:
    """The Gadget table and its channel triggers, rolled back with the test."""
    with connection.schema_editor() as editor:
        editor.create_model(Gadget)
    for trigger in Gadget._meta.triggers:
        trigger.install(Gadget)
    yield


def run(*names: str) -> list:
    return Executor("test-worker").run_batch(Scope(channels=registry.expand(names)), 1000)


def states() -> dict[str, str]:
    return dict(
        EventRecord.objects.filter(channel__startswith="test_").values_list("channel", "state")
    )


def test_a_write_makes_one_event_per_subscription_in_the_writers_transaction(gadgets: None) -> None:
    Gadget.objects.bulk_create([Gadget(label="a"), Gadget(label="b")])
    rows = EventRecord.objects.filter(channel__startswith="test_fanned").order_by("id")
    assert sorted((r.channel, r.key) for r in rows) == [
        ("test_fanned:email_author", "a"),
        ("test_fanned:email_author", "b"),
        ("test_fanned:search_index", "a"),
        ("test_fanned:search_index", "b"),
    ]
    assert all(r.new["label"] == r.key for r in rows)

    with pytest.raises(RuntimeError), transaction.atomic():
        Gadget.objects.create(label="rolled back")
        raise RuntimeError
    assert EventRecord.objects.filter(key="rolled back").count() == 0


def test_each_subscription_runs_its_handler_once_on_its_own_event(gadgets: None) -> None:
    Gadget.objects.create(label="x")
    outcomes = run("test_fanned")
    assert len(outcomes) == 2 and all(o.ok for o in outcomes)
    events = EventRecord.objects.filter(channel__startswith="test_fanned")
    assert {e.channel: e.state for e in events} == {
        "test_fanned:email_author": "done",
        "test_fanned:search_index": "done",
    }
    assert sorted(calls.values()) == [1, 1]
    assert sorted(k.split(":")[0] for k in calls) == ["email_author", "search_index"]


def test_a_failing_subscription_never_reruns_the_others(gadgets: None) -> None:
    failing.add("email_author")
    Gadget.objects.create(label="x")
    run("test_fanned")
    by_queue = {e.channel: e for e in EventRecord.objects.filter(channel__startswith="test_fanned")}
    assert by_queue["test_fanned:email_author"].state == "failed"
    assert by_queue["test_fanned:search_index"].state == "done"

    run("test_fanned")  # the retry (base_delay 0) runs the failed subscription only
    run("test_fanned")
    by_queue = {e.channel: e for e in EventRecord.objects.filter(channel__startswith="test_fanned")}
    assert by_queue["test_fanned:email_author"].state == "dead"
    assert by_queue["test_fanned:email_author"].attempts == 3
    index_event = by_queue["test_fanned:search_index"].id
    assert calls[f"search_index:{index_event}"] == 1  # not repeated by its sibling's retries

    failing.clear()
    call_command("events", "retry", "--channel", "test_fanned:email_author", "--state", "dead")
    run("test_fanned")
    assert calls[f"search_index:{index_event}"] == 1
    assert EventRecord.objects.get(channel="test_fanned:email_author").state == "done"


def test_a_listener_can_take_one_subscription_or_all_of_a_channel(gadgets: None) -> None:
    assert wiring.handled_channels(["test_fanned"]) == (
        "test_fanned:email_author",
        "test_fanned:search_index",
    )
    assert wiring.handled_channels(["test_fanned:search_index"]) == ("test_fanned:search_index",)
    Gadget.objects.create(label="x")
    run("test_fanned:search_index")
    by_queue = {e.channel: e.state for e in EventRecord.objects.filter(key="x")}
    assert by_queue == {"test_fanned:email_author": "pending", "test_fanned:search_index": "done"}


def test_publishing_writes_one_event_per_subscription() -> None:
    first = announced.publish({"n": 1}, key="k")
    rows = EventRecord.objects.filter(channel__startswith="test_announced").order_by("id")
    assert [(r.id, r.channel) for r in rows] == [
        (first, "test_announced:audit"),
        (first + 1, "test_announced:notify"),
    ]
    run("test_announced")
    assert set(
        EventRecord.objects.filter(id__in=[first, first + 1]).values_list("state", flat=True)
    ) == {"done"}


def test_a_subscription_may_override_the_channels_timeout_and_retry() -> None:
    audit, notify = resolve("test_announced:audit"), resolve("test_announced:notify")
    assert (audit.timeout, audit.retry.max_attempts) == (7, 9)
    assert notify.retry.max_attempts != 9


@pytest.fixture
def scratch() -> Iterator[None]:
    """Channels declared by a test are forgotten after it (others' checks never see them)."""
    with registry.scratch():
        yield


@pytest.mark.usefixtures("scratch")
def test_a_second_handler_without_subscriptions_is_an_error_that_names_the_remedy() -> None:
    single = Channel("test_single_handler", operations=())

    @single.on
    def first(event: Event) -> None: ...

    with pytest.raises(ValueError, match=r"subscriptions=\[\.\.\.\].*makemigrations and migrate"):

        @single.on
        def second(event: Event) -> None: ...

    with pytest.raises(ValueError, match=r"no subscription 'typo'.*email_author, search_index"):
        fanned.on("typo")(lambda event: None)


@pytest.mark.usefixtures("scratch")
def test_a_subscription_without_a_handler_stops_the_listener_from_starting() -> None:
    half = Channel("test_half_handled", operations=(), subscriptions=["done", "forgotten"])
    half.on("done")(lambda event: None)
    assert wiring.missing_handlers(["test_half_handled"]) == ["test_half_handled:forgotten"]
    with pytest.raises(ValueError, match="test_half_handled:forgotten"):
        wiring.require_handlers(["test_half_handled"])


def test_commands_name_a_channel_or_one_of_its_subscriptions() -> None:
    with pytest.raises(CommandError, match="unknown channel"):
        call_command("events", "--channel", "test_fanned:nope")
    call_command("events", "--channel", "test_fanned")
    call_command("events", "--channel", "test_fanned:email_author")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_listeners_run_every_subscription_once_while_one_of_them_retries(
    start_listener: Callable[..., Listener],
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(fanout.CREATE_EFFECT_TABLE)
        cursor.execute(f"TRUNCATE {fanout.EFFECT_TABLE}")
    with transaction.atomic():
        firsts = [fanout.fanout.publish({"n": n}, key=n) for n in range(20)]
        older = [  # written before the channel had subscriptions: fanned out at start
            EventRecord.objects.create(
                channel="fanout_demo",
                operation="PUBLISH",
                table_name="",
                key=f"old-{n}",
                new={"n": n},
            ).pk
            for n in range(5)
        ]
    start_listener(
        "--processes", "2", env_extra={"EVENTBUS_LISTENER_MODULES": "listeners,tests.fanout"}
    )
    queues = EventRecord.objects.filter(channel__startswith="fanout_demo:")
    wait_until(
        lambda: queues.filter(state="done").count() == 50,
        60,
        what="both subscriptions of 25 events to be done",
    )
    assert not EventRecord.objects.filter(pk__in=older).exists(), "fanned out, not left"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT subscription, count(*), count(DISTINCT event_id), min(attempt), "
            f"max(attempt) FROM {fanout.EFFECT_TABLE} GROUP BY 1 ORDER BY 1"
        )
        effects = cursor.fetchall()
    assert effects == [
        ("flaky", 25, 25, fanout.FLAKY_ATTEMPTS, fanout.FLAKY_ATTEMPTS),
        ("tally", 25, 25, 1, 1),  # once each, however often its sibling was retried
    ]
    tally_ids = set(queues.filter(channel="fanout_demo:tally").values_list("id", flat=True))
    assert set(firsts) <= tally_ids


def test_a_subscription_added_later_can_replay_the_channels_history_once() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from eventbus.operating.backfill import backfill

    start = timezone.now() - timedelta(hours=1)

    def written(queue: str, n: int) -> None:
        EventRecord.objects.create(
            channel=queue,
            operation="PUBLISH",
            table_name="",
            key=str(n),
            new={"n": n},
            state="done",
        )

    written("test_announced", 0)  # before the channel had subscriptions
    written("test_announced", 1)
    written("test_announced:audit", 2)  # when "audit" was its only subscription
    announced.publish({"n": 3}, key=3)  # from then on, both receive each event

    copied = backfill("test_announced:notify", since=start)
    assert copied.count == 3, "each change once, from whichever queue holds it"
    assert backfill("test_announced:notify", since=start).count == 0, "never copied twice"
    notify = EventRecord.objects.filter(channel="test_announced:notify").order_by("created_at")
    assert [e.key for e in notify] == ["0", "1", "2", "3"]
    run("test_announced:notify")
    assert set(notify.values_list("state", flat=True)) == {"done"}
    assert sum(1 for k in calls if k.startswith("notify:")) == 4

    # A third subscription: each change sits in two queues, and is copied once.
    from eventbus import sql

    with registry.scratch():
        trio = Channel("test_trio", operations=(), subscriptions=["a", "b", "c"])
        with connection.cursor() as cursor:
            for n in range(2):  # written when only "a" and "b" existed
                cursor.execute(
                    *sql.publish("test_trio", ["test_trio:a", "test_trio:b"], {"n": n}, None, False)
                )
        assert backfill("test_trio:c", since=start).count == 2
        assert trio.queues[2] == "test_trio:c"


def test_events_a_channel_got_before_it_had_subscriptions_go_to_each_subscription(
    gadgets: None,
) -> None:
    from eventbus.operating.backfill import fan_out

    for n in range(3):  # written by the channel's trigger before it declared subscriptions
        EventRecord.objects.create(
            channel="test_fanned", operation="INSERT", table_name="t", key=str(n), new={"n": n}
        )
    EventRecord.objects.create(
        channel="test_fanned", operation="INSERT", table_name="t", key="gone", state="dead"
    )
    with connection.cursor() as cursor:
        assert fan_out(registry.expand(["test_fanned"]), cursor) == 3
    rows = EventRecord.objects.filter(channel__startswith="test_fanned").order_by("id")
    assert sorted((r.channel, r.key, r.state) for r in rows) == [
        ("test_fanned", "gone", "dead"),  # dead ones stay; `events retry` brings them back
        *[("test_fanned:email_author", str(n), "pending") for n in range(3)],
        *[("test_fanned:search_index", str(n), "pending") for n in range(3)],
    ]
    run("test_fanned")
    assert len(calls) == 6


def test_recover_backfills_a_new_subscription_and_runs_its_events() -> None:
    for n in range(2):  # only "audit" existed when these were written
        EventRecord.objects.create(
            channel="test_announced:audit",
            operation="PUBLISH",
            table_name="",
            key=str(n),
            new={"n": n},
            state="done",
        )
    out = StringIO()
    call_command(
        "recover",
        "--channel",
        "test_announced:notify",
        "--since",
        "2000-01-01",
        "--backfill",
        stdout=out,
    )
    assert "backfill: test_announced:notify: copied 2 event(s) from the other queues" in (
        out.getvalue()
    )
    notify = EventRecord.objects.filter(channel="test_announced:notify")
    assert sorted(notify.values_list("key", "state")) == [("0", "done"), ("1", "done")]
    with pytest.raises(CommandError, match="needs --since"):
        call_command("recover", "--channel", "test_announced:notify", "--backfill")


def test_captured_events_name_their_subscription(gadgets: None) -> None:
    from eventbus.testing import capture_events

    with capture_events() as events:
        Gadget.objects.create(label="k")
    assert sorted(events.summary()) == [
        ("test_fanned:email_author", "INSERT", "k"),
        ("test_fanned:search_index", "INSERT", "k"),
    ]
    assert len(events.of("test_fanned")) == 2
    assert events.one("test_fanned:search_index").subscription == "search_index"


def test_a_settings_entry_that_names_no_channel_is_a_warning() -> None:
    from django.core import checks
    from django.test import override_settings

    entries = {"test_fanned:serch_index": {"timeout": 5}, "test_fanned:search_index": {}}
    with override_settings(EVENTBUS={"LISTENER_MODULES": ["listeners"], "CHANNELS": entries}):
        found = [m for m in checks.run_checks(tags=["eventbus"]) if m.id == "eventbus.W002"]
    assert [m.msg.split(". ")[0] for m in found] == [
        'EVENTBUS["CHANNELS"] names what no channel declares: test_fanned:serch_index'
    ]


@pytest.mark.usefixtures("scratch")
def test_a_second_on_dead_hook_is_an_error() -> None:
    single = Channel("test_two_hooks", operations=())
    single.on_dead(lambda event, error: None)
    with pytest.raises(ValueError, match="already has the on_dead hook"):
        single.on_dead(lambda event, error: None)
