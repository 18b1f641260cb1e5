"""Fault containment (issue 10): what is in a batch never stalls the queue, kills workers
in a loop, repeats finished work or holds a transaction open for long.

Handlers that misbehave on purpose live in tests/poison.py. Each leaves a row in
``containment_effect`` (a database effect: commits only with its event) and a line in an
effects file (an external effect: survives any rollback), so "exactly once" and "at most
twice" are counted, not assumed.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.test import override_settings
from django.utils import timezone

from blog.models import Tag
from eventbus import conf
from eventbus.models import EventRecord
from eventbus.running.executor import Executor, Outcome
from eventbus.sql import Scope
from tests import poison
from tests.support import ROOT, Listener, manage_env, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

StartListener = Callable[..., Listener]
POISONED = {"EVENTBUS_LISTENER_MODULES": "listeners,tests.poison"}
RESTART = re.compile(r"worker \d+ \(pid \d+\) exited with code")


@pytest.fixture(autouse=True)
def effect_table() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(poison.CREATE_EFFECT_TABLE)
        cursor.execute(f"TRUNCATE {poison.EFFECT_TABLE}")
    yield
    connections.close_all()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {poison.EFFECT_TABLE}")


def publish(channel: str, **new: Any) -> int:
    return EventRecord.objects.create(
        channel=channel, operation="INSERT", table_name="x", new=new
    ).pk


def db_effects() -> Counter[int]:
    """How many committed database effects each event has."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT event_id FROM {poison.EFFECT_TABLE}")
        return Counter(row[0] for row in cursor.fetchall())


def notes() -> dict[int, str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT event_id, note FROM {poison.EFFECT_TABLE}")
        return dict(cursor.fetchall())


def file_effects(path: Path) -> Counter[int]:
    """How many times each event's handler ran to its external effect."""
    if not path.exists():
        return Counter()
    return Counter(int(line) for line in path.read_text().split())


def states(ids: list[int]) -> dict[int, str]:
    return dict(EventRecord.objects.filter(pk__in=ids).values_list("pk", "state"))


def event(pk: int) -> EventRecord:
    return EventRecord.objects.get(pk=pk)


def restarts(listener: Listener) -> int:
    return len(RESTART.findall(listener.log()))


def scope(*channels: str) -> Scope:
    return Scope(channels=channels)


# --- 1. A poison event never stalls the queue --------------------------------------------


def test_an_error_text_with_a_nul_or_a_lone_surrogate_fails_only_its_event(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """Reproduced before: a NUL in an exception message failed the batch's UPDATE, the
    worker died, restarted, claimed the same batch and died again; the innocent events of
    the batch ran on every restart and never committed."""
    effects = str(tmp_path / "effects")
    with transaction.atomic():
        innocent = [publish("containment_plain", effects=effects) for _ in range(3)]
        nul = publish("containment_plain", effects=effects, do="nul")
        innocent += [publish("containment_plain", effects=effects) for _ in range(3)]
        surrogate = publish("containment_plain", effects=effects, do="surrogate")
        innocent += [publish("containment_plain", effects=effects) for _ in range(2)]

    listener = start_listener("--processes", "1", env_extra=POISONED, workers=1)
    worker = listener.worker_pids()
    wait_until(
        lambda: (
            set(states(innocent).values()) == {"done"}
            and event(nul).attempts
            and event(surrogate).attempts
        ),
        20,
        what=f"the batch to be handled; log:\n{listener.log()}",
    )

    text = "RuntimeError: callback server answered EVIL\ufffd and hung up"
    record = event(nul)
    assert (record.state, record.attempts) == ("failed", 1)
    assert record.last_error.startswith(text), record.last_error
    assert record.errors[-1]["error"].startswith(text), "the error history too"
    record = event(surrogate)
    assert (record.state, record.attempts) == ("failed", 1)
    first_line = record.last_error.splitlines()[0]
    assert re.fullmatch(r"OSError: cannot open caf[?\ufffd]\.txt", first_line), first_line

    assert db_effects() == Counter(innocent), "each innocent's database effect exactly once"
    ran = file_effects(Path(effects))
    assert {pk: ran[pk] for pk in innocent} == dict.fromkeys(innocent, 1), (
        "each innocent's external effect exactly once"
    )
    assert (ran[nul], ran[surrogate]) == (1, 1)
    assert restarts(listener) == 0, listener.log()
    assert listener.worker_pids() == worker


def test_a_handler_that_kills_its_process_is_made_dead_and_the_rest_run(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """`os._exit` (as a segfault or the OOM killer) for one event of a batch of 20: the
    crash ledger finds it, it goes dead after CRASH_LIMIT (3) deaths without running a
    fourth time, and the worker restarts and external repeats stay bounded."""
    effects = str(tmp_path / "effects")
    with transaction.atomic():
        ids = [
            publish("containment_plain", effects=effects, do="exit" if n == 9 else "")
            for n in range(20)
        ]
    killer = ids[9]
    innocent = [pk for pk in ids if pk != killer]

    listener = start_listener("--processes", "1", env_extra=POISONED)
    wait_until(
        lambda: (
            set(states(ids).values()) <= {"done", "dead"} and states([killer])[killer] == "dead"
        ),
        25,
        what=f"every event to be resolved ({Counter(states(ids).values())}); "
        f"log:\n{listener.log()}",
    )
    record = event(killer)
    assert "worker died while handling this event 3 times" in record.last_error
    assert set(states(innocent).values()) == {"done"}
    assert db_effects() == Counter(innocent), "database effects exactly once"

    ran = file_effects(Path(effects))
    assert ran[killer] == 3, "the killer ran CRASH_LIMIT times, not a fourth"
    runs = Counter(ran[pk] for pk in innocent)
    assert max(runs) <= 2, f"innocent events by number of runs: {runs}"
    assert restarts(listener) <= 3, listener.log()
    print(f"\nrestarts: {restarts(listener)}; innocent events by number of runs: {dict(runs)}")
    # The worker that outlived the killer keeps handling.
    more = publish("containment_plain", effects=effects)
    wait_until(lambda: event(more).state == "done", 10, what="a later event to be handled")
    assert restarts(listener) <= 3


def test_an_event_whose_outcome_cannot_be_recorded_goes_dead_and_the_rest_commit(
    tmp_path: Path,
) -> None:
    """Marking fails for one event (a trigger refuses its done row): the batch is rolled
    back and run again event by event; that event is made dead with the reason, the
    others commit, and the batch never raises into the worker."""
    effects = str(tmp_path / "effects")
    ids = [publish("containment_plain", effects=effects) for _ in range(6)]
    refused = ids[2]
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION containment_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF NEW.state = 'done' AND NEW.id = {int(refused)} THEN "
            "RAISE EXCEPTION 'event % may not be done', NEW.id; END IF; RETURN NEW; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER containment_refuse BEFORE INSERT OR UPDATE ON eventbus_event "
            "FOR EACH ROW EXECUTE FUNCTION containment_refuse()"
        )
    try:
        executor = Executor("t")
        outcomes = executor.run_batch(scope("containment_plain"), 100)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS containment_refuse ON eventbus_event")
            cursor.execute("DROP FUNCTION IF EXISTS containment_refuse()")

    by_id = {o.event_id: o.status for o in outcomes}
    assert by_id == {pk: "dead" if pk == refused else "done" for pk in ids}
    assert states(ids) == by_id
    reason = event(refused).last_error
    assert reason.startswith("could not record this event's outcome:"), reason
    assert f"event {refused} may not be done" in reason
    assert db_effects() == Counter(pk for pk in ids if pk != refused)
    assert executor.run_batch(scope("containment_plain"), 100) == []


# --- 2. Timeouts that never corrupt the transaction -------------------------------------


def overrun_batch(*kinds: str) -> tuple[list[int], list[int]]:
    """Fast events around overruns of each kind (twice each), in one batch."""
    fast, slow = [], []
    with transaction.atomic():
        for do in kinds * 2:
            fast.append(publish("containment_overrun", do="fast"))
            slow.append(publish("containment_overrun", do=do))
        fast.append(publish("containment_overrun", do="fast"))
    return fast, slow


def assert_overruns_timed_out(fast: list[int], slow: list[int]) -> None:
    for pk in slow:
        record = event(pk)
        assert record.state == "dead", (record.new, record.state, record.last_error)
        assert record.last_error.startswith("HandlerTimeout: handler ran longer than 0.05 s"), (
            record.new,
            record.last_error,
        )
    assert set(states(fast).values()) == {"done"}
    assert db_effects() == Counter(fast), "fast events once; nothing of the overruns commits"
    assert not Tag.objects.filter(name__startswith="overrun-").exists()


def test_handlers_past_their_timeout_fail_alone_in_a_listener(
    start_listener: StartListener,
) -> None:
    """A 50 ms timeout firing inside get_or_create and the handler's own atomic blocks,
    in pure Python and in a query: each overrun fails alone with HandlerTimeout, the fast
    events of the batch commit, and no worker dies."""
    fast, slow = overrun_batch("orm", "python", "query")
    listener = start_listener("--processes", "1", env_extra=POISONED, workers=1)
    worker = listener.worker_pids()
    wait_until(
        lambda: set(states(fast + slow).values()) <= {"done", "dead"},
        30,
        what=f"the batch to be resolved; log:\n{listener.log()}",
    )
    assert_overruns_timed_out(fast, slow)
    assert restarts(listener) == 0, listener.log()
    assert listener.worker_pids() == worker
    assert "could not be committed" not in listener.log(), "no batch lost its transaction"


def run_in_a_thread(channel: str) -> list[Outcome]:
    """Run batches of `channel` until none is left, in a thread that is not the main one
    (so no SIGALRM: the engine's watchdog thread enforces the time limits)."""
    result: list[Outcome] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            executor = Executor("t-thread")
            while outcomes := executor.run_batch(scope(channel), 100):
                result.extend(outcomes)
        except BaseException as exc:  # reported to the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="handler-thread")
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the handler thread never finished"
    assert errors == []
    return result


def test_handlers_past_their_timeout_fail_alone_off_the_main_thread() -> None:
    """A pure-Python loop and a slow query time out in a handler thread too."""
    fast, slow = overrun_batch("python", "query")
    started = time.monotonic()
    run_in_a_thread("containment_overrun")
    assert_overruns_timed_out(fast, slow)
    assert time.monotonic() - started < poison.GIVE_UP


def test_an_orm_loop_past_its_timeout_fails_alone_off_the_main_thread() -> None:
    fast, slow = overrun_batch("orm")
    run_in_a_thread("containment_overrun")
    assert_overruns_timed_out(fast, slow)


def test_a_batch_handler_gets_its_timeout_once_per_event() -> None:
    """10 events at 0.1 s each under a 0.5 s timeout: 1 s for the call is within budget."""
    ids = [publish("containment_batch") for _ in range(10)]
    outcomes = Executor("t").run_batch(scope("containment_batch"), 100)
    assert [(o.event_id, o.status) for o in outcomes] == [(pk, "done") for pk in ids], [
        o.error for o in outcomes
    ]
    assert db_effects() == Counter(ids)


# --- 5. A stop never repeats finished work -----------------------------------------------


def test_sigterm_commits_the_finished_events_and_leaves_the_rest_pending(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """Reproduced before: SIGTERM during a batch of slow handlers, the worker was killed
    at the stop timeout and the whole batch rolled back: 19 runs for 10 events."""
    effects = tmp_path / "effects"
    with transaction.atomic():
        ids = [publish("containment_slow", effects=str(effects)) for _ in range(10)]
    shutdown_timeout = 8.0
    listener = start_listener(
        "--processes",
        "1",
        env_extra={
            **POISONED,
            "CONTAINMENT_SLEEP": "1.5",
            "EVENTBUS_BATCH_TIME_BUDGET": "60",  # one batch of 10: the stop must cut it
            "EVENTBUS_SHUTDOWN_TIMEOUT": str(shutdown_timeout),
        },
    )
    wait_until(
        lambda: len(file_effects(effects)) >= 2,
        20,
        what=f"two handlers to finish; log:\n{listener.log()}",
    )
    assert not EventRecord.objects.filter(pk__in=ids, state="done").exists(), "one batch"
    started = time.monotonic()
    code = listener.terminate(timeout=shutdown_timeout + 5)
    took = time.monotonic() - started
    assert code == 0
    assert took < shutdown_timeout, f"stopped in {took:.1f} s"
    assert "did not stop in time" not in listener.log()

    ran = file_effects(effects)
    done = [pk for pk, state in states(ids).items() if state == "done"]
    assert sorted(ran) == sorted(done), "exactly the events whose handlers ran are done"
    assert set(ran.values()) == {1} and db_effects() == ran
    assert 2 <= len(done) <= 3, "the stop waits for the handler in flight, no more"
    for record in EventRecord.objects.filter(pk__in=ids).exclude(state="done"):
        assert (record.state, record.attempts, record.last_error) == ("pending", 0, None)

    start_listener("--processes", "1", env_extra={**POISONED, "CONTAINMENT_SLEEP": "0"})
    wait_until(lambda: set(states(ids).values()) == {"done"}, 20, what="the rest to be handled")
    assert file_effects(effects) == Counter(ids), "10 handler runs in all for 10 events"
    assert db_effects() == Counter(ids)


# --- 6. Claim transactions are bounded ----------------------------------------------------


def test_slow_handlers_are_committed_by_several_short_transactions(
    start_listener: StartListener,
) -> None:
    """10 events at 0.3 s under the default 1 s budget: no transaction holds them all."""
    with transaction.atomic():
        ids = [publish("containment_slow") for _ in range(10)]
    listener = start_listener(
        "--processes", "1", env_extra={**POISONED, "CONTAINMENT_SLEEP": "0.3"}
    )
    wait_until(
        lambda: set(states(ids).values()) == {"done"},
        20,
        what=f"all to be handled; log:\n{listener.log()}",
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT xmin::text) FROM eventbus_event WHERE id = ANY(%s)", [ids]
        )
        transactions = cursor.fetchone()[0]
    assert transactions >= 3, f"{transactions} transaction(s) marked the 10 events"
    assert db_effects() == Counter(ids)
    assert set(EventRecord.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}


def test_a_claim_transaction_opens_at_most_64_savepoints() -> None:
    """PostgreSQL caches 64 subtransactions per backend; beyond that every session's
    snapshots slow down. 150 events, one savepoint each, claimed in a batch of 500."""
    EventRecord.objects.bulk_create(
        EventRecord(channel="containment_plain", operation="INSERT", table_name="x", new={})
        for _ in range(150)
    )
    ids = sorted(EventRecord.objects.values_list("pk", flat=True))
    eventbus = {**settings.EVENTBUS, "BATCH_TIME_BUDGET": 600}  # only savepoints count here
    with override_settings(EVENTBUS=eventbus):
        executor = Executor("t")
        outcomes = executor.run_batch(scope("containment_plain"), 500)
    handled = [o.event_id for o in outcomes]
    assert 0 < len(handled) <= 64
    assert {o.status for o in outcomes} == {"done"}
    assert sorted(executor.unstarted) == sorted(set(ids) - set(handled))
    left = EventRecord.objects.filter(pk__in=executor.unstarted)
    assert set(left.values_list("state", "attempts")) == {("pending", 0)}
    assert db_effects() == Counter(handled)

    with override_settings(EVENTBUS=eventbus):
        while executor.run_batch(scope("containment_plain"), 500):
            pass
    assert set(states(ids).values()) == {"done"}
    assert db_effects() == Counter(ids), "each event's effect exactly once"
    sizes = transaction_sizes(ids)
    assert max(sizes) <= 64, f"events per claim transaction: {sizes}"


def transaction_sizes(ids: list[int]) -> list[int]:
    """How many of the events each transaction marked (rows grouped by their xmin)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM eventbus_event WHERE id = ANY(%s) GROUP BY xmin::text "
            "ORDER BY min(id)",
            [ids],
        )
        return [row[0] for row in cursor.fetchall()]


def test_the_batch_after_one_cut_short_is_still_a_batch() -> None:
    """Cutting a batch at 64 savepoints must not make the next claim run event by event:
    150 fast events take three transactions (64, 64, 22), not 87."""
    EventRecord.objects.bulk_create(
        EventRecord(channel="containment_plain", operation="INSERT", table_name="x", new={})
        for _ in range(150)
    )
    ids = sorted(EventRecord.objects.values_list("pk", flat=True))
    with override_settings(EVENTBUS={**settings.EVENTBUS, "BATCH_TIME_BUDGET": 600}):
        executor = Executor("t")
        while executor.run_batch(scope("containment_plain"), 500):
            pass
    assert set(states(ids).values()) == {"done"}
    assert transaction_sizes(ids) == [64, 64, 22]


def test_a_large_payload_left_out_of_the_claim_reaches_its_handler_intact() -> None:
    """With a 100 kB payload budget (1 kB per event at a batch of 100), a 2 MB payload is
    fetched just before its handler runs: the handler sees all of it."""
    blob = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(32768))
    assert len(blob) == 2 * 1024 * 1024
    small = publish("containment_payload", blob="tiny")
    large = publish("containment_payload", blob=blob)
    with override_settings(EVENTBUS={**settings.EVENTBUS, "PAYLOAD_BUDGET": 100_000}):
        outcomes = Executor("t").run_batch(scope("containment_payload"), 100)
    assert [(o.event_id, o.status) for o in outcomes] == [(small, "done"), (large, "done")], [
        o.error for o in outcomes
    ]
    digest = hashlib.sha256(blob.encode()).hexdigest()
    assert notes() == {
        small: f"4:{hashlib.sha256(b'tiny').hexdigest()}",
        large: f"{len(blob)}:{digest}",
    }


# As PostgreSQL stores them: whitespace around, escapes (a NUL, non-ASCII), a number
# past 64 bits, a value that is no object, an empty object.
SPELLINGS = [
    ' {"a": 1}  ',
    '{"nul": "a\\u0000b", "cafe": "caf\\u00e9 \u2615", "big": 123456789012345678901234567890, '
    '"f": 1.5e300, "nested": [1, {"x": null}]}',
    "[1, 2, 3]",
    "{}",
]


def test_a_payload_reaches_its_handler_as_stored_whatever_its_json_spelling() -> None:
    """The claim sends payloads as text and the worker decodes them: each handler gets
    what `json.loads` makes of the stored JSON, in `old` and in `new`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, old, new) "
            "SELECT 'containment_spelling', 'UPDATE', 'x', s::json, s::json "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS t(s, n) ORDER BY n RETURNING id",
            [SPELLINGS],
        )
        ids = [row[0] for row in cursor.fetchall()]
    outcomes = Executor("t").run_batch(scope("containment_spelling"), 100)
    assert [(o.event_id, o.status) for o in outcomes] == [(i, "done") for i in ids]
    expected = [json.dumps(json.loads(s), sort_keys=True) for s in SPELLINGS]
    assert [notes()[i] for i in ids] == [f"{e}|{e}" for e in expected]


# PostgreSQL stores JSON nested thousands deep; Python's json stops at its recursion
# limit. Before: the claim raised RecursionError, and the worker started over on the same
# batch forever, the whole queue behind it stalled.
DEEP = '{"deep": ' + "[" * 5000 + "]" * 5000 + "}"


@pytest.mark.parametrize(
    "channel", ["containment_plain", "containment_shared", "containment_batch"]
)
@pytest.mark.parametrize("budget", [None, 1000], ids=["in the claim", "fetched later"])
def test_a_payload_nested_deeper_than_python_decodes_is_dead_and_its_batch_runs(
    channel: str, budget: int | None
) -> None:
    """Whether the claim carries the payload or it is fetched before its handler runs
    (a 1 kB budget leaves it out), under each isolation: that event is dead with the
    reason, its handler never runs, and the events around it are handled."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, new) "
            "SELECT %s, 'INSERT', 'x', s::json "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS t(s, n) ORDER BY n RETURNING id",
            [channel, ["{}", DEEP, "{}"]],
        )
        before, deep, after = (row[0] for row in cursor.fetchall())
    overrides = {} if budget is None else {"PAYLOAD_BUDGET": budget}
    with override_settings(EVENTBUS={**settings.EVENTBUS, **overrides}):
        outcomes = Executor("t").run_batch(scope(channel), 3)
    assert {o.event_id: o.status for o in outcomes} == {
        before: "done",
        deep: "dead",
        after: "done",
    }
    assert set(notes()) == {before, after}  # the deep one's handler never ran
    reason = EventRecord.objects.values_list("last_error", flat=True).get(pk=deep)
    assert f"MalformedEvent: event {deep} ({channel}): its payload cannot be decoded" in reason
    assert "maximum recursion depth exceeded" in reason


# --- Review mends: what a handler does to its worker stays with its event -----------------


@pytest.mark.parametrize("do", ["close_old_connections", "close"])
def test_a_handler_that_closes_the_connection_fails_alone(do: str, tmp_path: Path) -> None:
    """Reproduced before: `close_old_connections()` (or `connection.close()`) in a handler
    closed the claim connection; the engine took it for a database outage, reconnected and
    ran the same batch again, for ever. Now the batch is rolled back and run event by
    event: the culprit is made dead with the reason, the others are done once."""
    effects = str(tmp_path / "effects")
    with transaction.atomic():
        ids = [publish("containment_plain", effects=effects) for _ in range(3)]
        culprit = publish("containment_plain", effects=effects, do=do)
        ids += [publish("containment_plain", effects=effects) for _ in range(3)]
    innocent = list(ids)
    ids.insert(3, culprit)

    executor = Executor("t")
    outcomes = executor.run_batch(scope("containment_plain"), 100)  # returns, never loops

    by_id = {o.event_id: o.status for o in outcomes}
    assert by_id == {pk: "dead" if pk == culprit else "done" for pk in ids}
    assert states(ids) == by_id
    record = event(culprit)
    assert record.last_error.startswith("could not record this event's outcome: "), (
        record.last_error
    )
    assert db_effects() == Counter(innocent), "each innocent's database effect exactly once"
    ran = file_effects(Path(effects))
    assert max(ran[pk] for pk in innocent) <= 2, f"runs per event: {ran}"
    assert executor.run_batch(scope("containment_plain"), 100) == [], "nothing left to run"


def test_an_on_dead_hook_that_kills_the_worker_is_skipped_after_it(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """Reproduced before: the hook of an event that dies at its first attempt called
    `os._exit`; each restart ran the event (and its hook) again, an endless crash loop that
    also starved the innocent event claimed with it. Now, once it has killed the worker
    CRASH_LIMIT times, the event is made dead without running its hook again."""
    effects = str(tmp_path / "effects")
    with transaction.atomic():
        doomed = publish("containment_doomed", effects=effects, do="exit_on_dead")
        innocent = publish("containment_doomed", effects=effects)

    listener = start_listener("--processes", "1", env_extra=POISONED)
    wait_until(
        lambda: set(states([doomed, innocent]).values()) <= {"done", "dead"},
        30,
        what=f"both events to be resolved ({states([doomed, innocent])}); log:\n{listener.log()}",
    )
    record = event(doomed)
    assert record.state == "dead"
    assert "its on_dead hook was skipped (the worker died running it)" in record.last_error, (
        record.last_error
    )
    assert (event(innocent).state, db_effects()[innocent]) == ("done", 1)
    assert db_effects()[doomed] == 0, "nothing of a crashed attempt commits"
    limit = conf.get().CRASH_LIMIT
    assert restarts(listener) <= limit + 1, listener.log()
    ran = file_effects(Path(effects))
    assert ran[doomed] <= limit, "its handler ran at most CRASH_LIMIT times"
    assert ran[innocent] <= 2, "the innocent's external effect is not repeated in a loop"
    # No more restarts once it is dead: the worker keeps handling.
    more = publish("containment_doomed", effects=effects)
    wait_until(lambda: event(more).state == "done", 10, what="a later event to be handled")
    assert restarts(listener) <= limit + 1, listener.log()


def test_a_server_side_cursor_left_open_by_a_failed_handler_harms_no_other_event() -> None:
    """Reproduced before: a handler failed half-way through `QuerySet.iterator()`; its
    cursor was closed later, when the garbage collector freed the handler's frames, by a
    CLOSE sent into whatever transaction was current: that aborted it (`current transaction
    is aborted`) or hung the worker. Now the culprit fails alone, with its own error. An
    innocent handler runs the collector on purpose, so the timing is not left to chance."""
    Tag.objects.bulk_create([Tag(name="cursor-a"), Tag(name="cursor-b"), Tag(name="cursor-c")])
    executor = Executor("t")
    for _ in range(5):
        with transaction.atomic():
            culprit = publish("containment_plain", do="cursor")
            innocent = [publish("containment_plain") for _ in range(2)]
            innocent += [publish("containment_plain", do="gc")]
            innocent += [publish("containment_plain") for _ in range(2)]
        outcomes = executor.run_batch(scope("containment_plain"), 100)
        statuses = {o.event_id: (o.status, (o.error or "").split("\n")[0]) for o in outcomes}
        assert statuses == {
            culprit: ("failed", "ValueError: gave up half-way through the tags"),
            **dict.fromkeys(innocent, ("done", "")),
        }
        record = event(culprit)
        assert (record.state, record.attempts) == ("failed", 1)
        assert set(states(innocent).values()) == {"done"}
        gc.collect()  # whatever is left to free, freed now: between batches
    assert Counter(db_effects().values()) == Counter({1: 25}), "each innocent exactly once"
    failed = EventRecord.objects.filter(state="failed")
    assert set(failed.values_list("new__do", flat=True)) == {"cursor"}, "nothing else fails"
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # the test's own connection is healthy too
    assert not connection.needs_rollback


def test_workers_killed_at_the_stop_timeout_count_no_crash(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """Each deploy SIGTERMs the listener during a slow handler and the supervisor kills the
    worker after EVENTBUS_SHUTDOWN_TIMEOUT. That is the deploy's doing, not the event's:
    after more such kills than CRASH_LIMIT the event still runs, and is done."""
    started, effects = tmp_path / "started", tmp_path / "effects"
    pk = publish("containment_slow", sleep=3, started=str(started), effects=str(effects))
    env = {**POISONED, "EVENTBUS_SHUTDOWN_TIMEOUT": "1"}
    kills = conf.get().CRASH_LIMIT + 1
    for n in range(1, kills + 1):
        listener = start_listener("--processes", "1", env_extra=env)
        wait_until(
            lambda n=n: file_effects(started)[pk] >= n or event(pk).state != "pending",
            15,
            what=f"start {n} of the handler; log:\n{listener.log()}",
        )
        record = event(pk)
        assert (record.state, record.attempts) == ("pending", 0), (n, record.last_error)
        listener.terminate(timeout=10)
        assert "did not stop in time" in listener.log(), listener.log()
    assert file_effects(started)[pk] == kills
    assert not file_effects(effects), "no kill let the handler finish"

    listener = start_listener("--processes", "1", env_extra={**POISONED, "CONTAINMENT_SLEEP": "0"})
    wait_until(
        lambda: event(pk).state != "pending",
        15,
        what=f"the event to be handled; log:\n{listener.log()}",
    )
    record = event(pk)
    assert (record.state, record.attempts, record.last_error) == ("done", 1, None)
    assert file_effects(started)[pk] == kills + 1, "it ran once more: it was not made dead"
    assert db_effects() == Counter([pk])


@pytest.mark.parametrize(
    ("do", "error"), [("interrupt", "KeyboardInterrupt"), ("exit", "SystemExit: 3")]
)
def test_keyboardinterrupt_or_systemexit_from_a_shared_savepoint_fails_its_event(
    do: str, error: str
) -> None:
    """A handler of an isolation="batch" channel raises KeyboardInterrupt or SystemExit
    (not Exceptions). Reproduced before: KeyboardInterrupt escaped the batch and killed the
    worker; SystemExit made its event dead. Now it is that event's error like any other:
    a failed attempt, retried later; the rest of the batch is done."""
    with transaction.atomic():
        innocent = [publish("containment_shared") for _ in range(3)]
        culprit = publish("containment_shared", do=do)
        innocent += [publish("containment_shared") for _ in range(3)]
    try:
        outcomes = Executor("t").run_batch(scope("containment_shared"), 100)
    except BaseException as exc:  # not to pytest, which would stop the whole run
        pytest.fail(f"run_batch raised {exc!r}")
    assert {o.event_id: o.status for o in outcomes} == {
        **dict.fromkeys(innocent, "done"),
        culprit: "failed",
    }
    record = event(culprit)
    assert (record.state, record.attempts) == ("failed", 1)
    assert record.last_error.startswith(error), record.last_error
    assert "worker died" not in record.last_error
    assert record.run_after > timezone.now(), "retried later, not at once"
    assert set(states(innocent).values()) == {"done"}
    assert db_effects() == Counter(innocent), "each innocent exactly once; not the culprit"


def test_ctrl_c_stops_recover_after_the_handler_in_flight(tmp_path: Path) -> None:
    """Ctrl-C during `recover`: the handler in flight finishes and its event is done; the
    replay stops there and the rest stay pending, unattempted. Reproduced before: the
    KeyboardInterrupt was taken for the event's error (failed) and the replay went on."""
    started, effects = tmp_path / "started", tmp_path / "effects"
    with transaction.atomic():
        ids = [
            publish("containment_slow", sleep=2, started=str(started), effects=str(effects))
            for _ in range(3)
        ]
    recover = subprocess.Popen(
        [sys.executable, "manage.py", "recover", "--channel", "containment_slow"],
        cwd=ROOT,
        env=manage_env(**POISONED),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: file_effects(started), 15, what="the first handler to start")
        recover.send_signal(signal.SIGINT)
        output, _ = recover.communicate(timeout=15)
    finally:
        if recover.poll() is None:
            recover.kill()
            recover.wait()
    assert "interrupted" in output, output
    assert "Traceback" not in output, output
    assert file_effects(started) == Counter(ids[:1]), f"no handler starts after Ctrl-C:\n{output}"
    assert recover.returncode != 0, "events are left pending"
    assert file_effects(effects) == Counter(ids[:1]), "the handler in flight finished"
    records = {r.pk: r for r in EventRecord.objects.filter(pk__in=ids)}
    assert (records[ids[0]].state, records[ids[0]].attempts) == ("done", 1)
    for pk in ids[1:]:
        assert (records[pk].state, records[pk].attempts) == ("pending", 0), records[pk].last_error
    assert db_effects() == Counter(ids[:1])


def test_connections_terminated_by_the_server_never_count_as_worker_deaths(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """A failover or a restarted database cuts every connection of every worker, the crash
    ledger's included, in the middle of a batch. The workers live on; so must the event.
    Reproduced before: with several workers, after a few such cuts the event was dead with
    `worker died while handling this event 3 times`, and no worker had died."""
    started, effects = tmp_path / "started", tmp_path / "effects"
    pk = publish("containment_slow", sleep=2, started=str(started), effects=str(effects))
    # CRASH_LIMIT 1: a single start miscounted as a death would kill the event
    env = {**POISONED, "EVENTBUS_CRASH_LIMIT": "1"}
    listener = start_listener("--processes", "4", env_extra=env, workers=4)
    cuts = 6
    for n in range(1, cuts + 1):
        wait_until(
            lambda n=n: file_effects(started)[pk] >= n or event(pk).state != "pending",
            20,
            what=f"start {n} of the handler; log:\n{listener.log()}",
        )
        assert event(pk).state == "pending", event(pk).last_error
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                "datname = current_database() AND pid <> pg_backend_pid() AND "
                "application_name LIKE 'eventbus-%%'"
            )
    wait_until(lambda: event(pk).state != "pending", 30, what=f"the event; {listener.log()}")
    record = event(pk)
    assert (record.state, record.last_error) == ("done", None), record.last_error
    assert "exited with code" not in listener.log(), "no worker died"
    assert db_effects() == Counter([pk])


@pytest.mark.parametrize("claimer", ["vm:3", "vm:4"])
def test_a_dead_worker_counts_even_when_a_new_process_reuses_its_name(claimer: str) -> None:
    """A container restarted after a whole-container kill (an OOM group kill, `docker
    kill`) gives its new worker the old one's pid, so the same name `vm:3`, and that new
    worker's fresh heartbeat. Reproduced before: its namesake's crash-ledger rows then
    looked like a live worker's and never counted: the killer crash-looped forever. Now
    the rows predate the heartbeat's process, so they count, for the namesake itself and
    for a sibling alike."""
    pk = publish("containment_plain")
    limit = conf.get().CRASH_LIMIT
    with connection.cursor() as cursor:
        for _ in range(limit):  # the deaths of the earlier `vm:3`, one a minute ago each
            cursor.execute(
                "INSERT INTO eventbus_inflight (worker, first_ids, last_ids, attempts, "
                "started_at) VALUES ('vm:3', ARRAY[%s], ARRAY[%s], '{0}', "
                "now() - interval '1 minute')",
                [pk, pk],
            )
        cursor.execute(  # the new `vm:3`, alive and heartbeating
            "INSERT INTO eventbus_worker (name, host, pid, channels, started_at, last_seen) "
            "VALUES ('vm:3', 'vm', 3, '*', now(), now())"
        )
    [outcome] = Executor(claimer).run_batch(scope("containment_plain"), 10)
    assert outcome.status == "dead"
    assert f"worker died while handling this event {limit} times" in (outcome.error or "")
    assert not db_effects(), "it did not run again"
