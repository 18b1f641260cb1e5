"""`listen --concurrency C`: C handler slots per process keep every promise of one worker.

Slots are threads, each with its own claim connection and transaction. The handlers that
misbehave on purpose live in tests/poison.py; each leaves a row in ``containment_effect``
(commits only with its event) and a line in an effects file (survives any rollback), so
"exactly once" is counted, not assumed.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from django.db import transaction

from eventbus.models import EventRecord
from tests.support import Listener, database_url, wait_until
from tests.test_containment import (
    POISONED,
    db_effects,
    effect_table,  # noqa: F401 - the effect table, made and dropped around each test
    file_effects,
    notes,
    publish,
    states,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

StartListener = Callable[..., Listener]


def slot_connections(listener: Listener) -> dict[str, int]:
    """The listener's open database connections, by application_name."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'eventbus-%' "
            "GROUP BY 1"
        ).fetchall()
    return dict(rows)


def test_slots_run_handlers_at_the_same_time_and_each_event_exactly_once(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """8 events whose handlers each wait until all 8 have started: with 1 process and 8
    slots they meet (they ran at once); then 300 more run with 2 processes of 8 slots,
    each event's database and external effect exactly once."""
    started, effects = tmp_path / "started", tmp_path / "effects"
    with transaction.atomic():
        met = [publish("containment_rendezvous", started=str(started), meet=8) for _ in range(8)]
    listener = start_listener("--processes", "1", "--concurrency", "8", env_extra=POISONED)
    wait_until(
        lambda: set(states(met).values()) == {"done"},
        30,
        what=f"the rendezvous to be handled; log:\n{listener.log()}",
    )
    assert set(notes().values()) == {"met"}, "all 8 handlers were running at the same time"
    listener.terminate()

    with transaction.atomic():
        ids = [publish("containment_slow", sleep=0.01, effects=str(effects)) for _ in range(300)]
    listener = start_listener(
        "--processes", "2", "--concurrency", "8", env_extra=POISONED, workers=2
    )
    wait_until(
        lambda: set(states(ids).values()) == {"done"},
        60,
        what=f"300 events handled ({Counter(states(ids).values())}); log:\n{listener.log()}",
    )
    assert db_effects() == Counter(met + ids), "database effects exactly once"
    assert file_effects(effects) == Counter(ids), "each handler ran once"
    assert set(EventRecord.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}


def test_a_listener_opens_one_listen_connection_per_process_and_one_per_slot(
    start_listener: StartListener,
) -> None:
    """2 processes of 4 slots: 8 claim connections, 2 LISTEN connections (not 8), and one
    crash-ledger connection per process, not per slot."""
    listener = start_listener(
        "--processes", "2", "--concurrency", "4", env_extra=POISONED, workers=2
    )
    wait_until(
        lambda: slot_connections(listener).get("eventbus-listen") == 2,
        20,
        what=f"the listen connections (have {slot_connections(listener)})",
    )
    with transaction.atomic():  # every slot claims: each opens its connection
        for _ in range(80):
            publish("containment_slow", sleep=0.1)
    wait_until(
        lambda: slot_connections(listener).get("eventbus-worker", 0) >= 8,
        20,
        what=f"8 slot connections (have {slot_connections(listener)})",
    )
    opened = slot_connections(listener)
    assert opened["eventbus-listen"] == 2, opened
    # one crash-ledger connection per process (its slots share it), one for the supervisor
    assert opened.get("eventbus-ledger", 0) <= 2 + 1, opened
    # per process: its 4 slots, and the main thread's (heartbeats, pings, purges)
    assert opened["eventbus-worker"] <= 2 * (4 + 1), opened


def test_a_slot_past_its_timeout_fails_alone_and_the_other_slots_go_on(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """Overruns in Python, in the ORM and in a query, off the main thread: each fails with
    its timeout; the fast events around them commit once."""
    with transaction.atomic():
        slow = [publish("containment_overrun", do=do) for do in ("python", "orm", "query")]
        fast = [publish("containment_overrun", do="fast") for _ in range(20)]
    listener = start_listener("--processes", "1", "--concurrency", "4", env_extra=POISONED)
    wait_until(
        lambda: (
            set(states(slow + fast).values()) <= {"done", "dead"}
            and "pending" not in states(slow).values()
        ),
        30,
        what=f"every event resolved ({states(slow + fast)}); log:\n{listener.log()}",
    )
    assert set(states(fast).values()) == {"done"}
    for pk in slow:
        record = EventRecord.objects.get(pk=pk)
        assert record.state == "dead", record.last_error
        assert "HandlerTimeout: handler ran longer than 0.05 s" in record.last_error
    assert db_effects() == Counter(fast), "the overruns' effects were rolled back"
    assert "exited with code" not in listener.log(), "no worker died"


def test_kill_9_with_busy_slots_loses_nothing_and_repeats_no_database_effect(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """kill -9 of a process while its 4 slots are each in a handler: their transactions
    die with their connections, the supervisor restarts the process, and every event is
    handled, its database effect exactly once (its external effect at most twice)."""
    started, effects = tmp_path / "started", tmp_path / "effects"
    with transaction.atomic():
        ids = [
            publish("containment_slow", sleep=2, started=str(started), effects=str(effects))
            for _ in range(8)
        ]
    listener = start_listener(
        "--processes",
        "1",
        "--concurrency",
        "4",
        env_extra={**POISONED, "EVENTBUS_BATCH_TIME_BUDGET": "60"},
        workers=1,
    )
    wait_until(
        lambda: len(file_effects(started)) >= 4,
        20,
        what=f"4 slots busy; log:\n{listener.log()}",
    )
    (pid,) = listener.worker_pids()
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: set(states(ids).values()) == {"done"},
        60,
        what=f"every event handled after the kill ({states(ids)}); log:\n{listener.log()}",
    )
    assert "exited with code -9" in listener.log()
    assert db_effects() == Counter(ids), "database effects exactly once"
    assert max(file_effects(effects).values()) == 1, "the killed handlers never finished"
    assert max(file_effects(started).values()) <= 2, "killed handlers ran again, once"
    for record in EventRecord.objects.filter(pk__in=ids):
        assert record.attempts == 1, (record.pk, record.attempts, record.last_error)


def test_sigterm_with_busy_slots_commits_what_they_finish_and_leaves_the_rest_pending(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """SIGTERM while 4 slots are in 1.5 s handlers: each finishes its handler in flight and
    commits it, takes nothing more, and the process exits cleanly before the stop
    timeout; the rest stay pending, untouched, for the next listener."""
    started, effects = tmp_path / "started", tmp_path / "effects"
    with transaction.atomic():
        ids = [
            publish("containment_slow", sleep=1.5, started=str(started), effects=str(effects))
            for _ in range(12)
        ]
    shutdown_timeout = 10.0
    listener = start_listener(
        "--processes",
        "1",
        "--concurrency",
        "4",
        env_extra={**POISONED, "EVENTBUS_SHUTDOWN_TIMEOUT": str(shutdown_timeout)},
        workers=1,
    )
    wait_until(
        lambda: len(file_effects(started)) >= 4,
        20,
        what=f"4 slots busy; log:\n{listener.log()}",
    )
    began = time.monotonic()
    assert listener.terminate(timeout=shutdown_timeout + 5) == 0
    assert time.monotonic() - began < shutdown_timeout, "stopped without being killed"
    assert "did not stop in time" not in listener.log()

    ran = file_effects(effects)
    done = [pk for pk, state in states(ids).items() if state == "done"]
    assert sorted(ran) == sorted(done), "exactly the events whose handlers finished are done"
    assert sorted(file_effects(started)) == sorted(done), "no handler was cut off"
    assert 4 <= len(done) < len(ids)
    for record in EventRecord.objects.filter(pk__in=ids).exclude(state="done"):
        assert (record.state, record.attempts, record.last_error) == ("pending", 0, None)


def test_a_slot_stuck_past_its_timeout_gets_its_process_restarted(
    start_listener: StartListener,
) -> None:
    """One slot blocked in a C call past its 50 ms timeout, while the other slots keep
    handling: the process stops vouching for itself, the supervisor kills it as hung after
    the grace and restarts it, and after CRASH_LIMIT such deaths the event is dead."""
    with transaction.atomic():
        stuck = publish("containment_overrun", do="block")
        fast = [publish("containment_overrun", do="fast") for _ in range(20)]
    listener = start_listener(
        "--processes",
        "1",
        "--concurrency",
        "4",
        env_extra={**POISONED, "EVENTBUS_HANG_GRACE": "1"},
    )
    wait_until(
        lambda: states([stuck])[stuck] == "dead",
        60,
        what=f"the stuck event to be resolved ({states([stuck])}); log:\n{listener.log()}",
    )
    assert "hung: no progress" in listener.log()
    record = EventRecord.objects.get(pk=stuck)
    assert "worker died while handling this event 3 times" in record.last_error
    assert set(states(fast).values()) == {"done"}
    assert db_effects() == Counter(fast)


def test_idle_slots_never_make_their_process_look_hung(start_listener: StartListener) -> None:
    """Slots waiting for work beat every second; with a 1 s hang grace a listener left
    idle for several seconds keeps its worker (reproduced before: it was killed as hung
    whenever a slot was between two beats)."""
    listener = start_listener(
        "--processes",
        "1",
        "--concurrency",
        "4",
        env_extra={**POISONED, "EVENTBUS_HANG_GRACE": "1"},
        workers=1,
    )
    worker = listener.worker_pids()
    began = time.monotonic()
    wait_until(
        lambda: time.monotonic() - began > 6 or "hung" in listener.log(),
        20,
        what="six idle seconds",
    )
    assert "hung" not in listener.log(), listener.log()
    assert listener.worker_pids() == worker
    pk = publish("containment_slow", sleep=0)
    wait_until(lambda: states([pk])[pk] == "done", 10, what="an event after the idle time")
