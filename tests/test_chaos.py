"""The chaos suite: a steady stream of writes while workers are killed, backends
terminated, listeners restarted and handler failures injected. Then: every committed event
is handled exactly once in the database, exactly the events meant to die are dead, and
every email was delivered.

Deterministic where it can be: the seed (CHAOS_SEED) fixes the writers, the disruptions
and the injected faults (see eventbus.running.faults), so a failure can be replayed. What a seed
cannot fix is timing: which batch is in flight when a worker dies.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from blog.models import Post, Tag
from eventbus.models import EventRecord
from eventbus.running.faults import injected
from tests.support import ROOT, Listener, SMTPServer, database_url, manage_env, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.chaos]

SEED = int(os.environ.get("CHAOS_SEED", "20261122"))
FAULT_RATE = 0.3
MAX_ATTEMPTS = 3
BATCH = 20
WRITERS, OPS_PER_WRITER = 3, 700


def test_no_event_lost_or_doubled_under_chaos(
    tmp_path: Path, smtp: SMTPServer, author: User, reader: User
) -> None:
    rng = random.Random(SEED)
    posts = [Post.objects.create(title=f"p{i}", body="x", author=author) for i in range(8)]
    tags = Tag.objects.bulk_create([Tag(name=f"t{i}") for i in range(6)])
    env = manage_env(
        smtp,
        EVENTBUS_FAULT_RATE=str(FAULT_RATE),
        EVENTBUS_FAULT_SEED=str(SEED),
        EVENTBUS_RETRY=json.dumps(
            {"max_attempts": MAX_ATTEMPTS, "base_delay": 0.05, "max_delay": 0.2}
        ),
        EVENTBUS_HEALTH_INTERVAL="1",
    )
    logs = iter(tmp_path / f"listen-{i}.log" for i in range(1000))
    args = ("--processes", "2", "--batch-size", str(BATCH))
    steady = Listener(next(logs), *args, env=env)  # its workers get killed
    restarted = [Listener(next(logs), *args, env=env)]  # this one gets restarted
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "tests/chaos_writer.py",
                database_url(),
                str(SEED + i),
                str(OPS_PER_WRITER),
                *[str(p.pk) for p in posts],
                "--",
                *[str(t.pk) for t in tags],
                "--",
                str(reader.pk),
            ],
            cwd=ROOT,
        )
        for i in range(WRITERS)
    ]
    disruptions: Counter[str] = Counter()
    try:
        steady.wait_started(2)
        deadline = time.monotonic() + 60
        while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.5))
            action = rng.choice(["kill", "terminate", "restart"])
            if action == "kill" and (pids := steady.worker_pids()):
                os.kill(rng.choice(pids), signal.SIGKILL)
            elif action == "terminate":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = current_database() AND "
                        "application_name IN ('eventbus-worker', 'eventbus-listen')"
                    )
            elif action == "restart":
                restarted[-1].wait_started(2)  # restart a running listener, not a starting one
                assert restarted[-1].terminate(timeout=20) == 0
                restarted.append(Listener(next(logs), *args, env=env))
            disruptions[action] += 1
        assert [w.wait(30) for w in writers] == [0] * WRITERS, "every writer finished"

        wait_until(
            lambda: not EventRecord.objects.filter(state__in=["pending", "failed"]).exists(),
            120,
            interval=0.2,
            what="every event done or dead",
        )
    finally:
        for w in writers:
            w.kill()
        steady.stop()
        for listener in restarted:
            listener.stop()

    events = list(EventRecord.objects.values("id", "channel", "operation", "state", "new", "old"))
    states = Counter(e["state"] for e in events)
    assert set(states) <= {"done", "dead"}

    # Exactly the events meant to die are dead: every attempt of theirs drew a fault.
    meant_to_die = {
        e["id"]
        for e in events
        if all(injected(SEED, FAULT_RATE, e["id"], a) for a in range(1, MAX_ATTEMPTS + 1))
    }
    dead = {e["id"] for e in events if e["state"] == "dead"}
    unexpected = EventRecord.objects.filter(id__in=dead ^ meant_to_die)
    assert dead == meant_to_die, [
        (r.id, r.channel, r.state, r.attempts, [x["error"].splitlines()[0] for x in r.errors])
        for r in unexpected
    ]

    # Database effects exactly once: each tag's count is its done links minus done unlinks.
    expected: Counter[int] = Counter()
    for e in events:
        if e["channel"] == "post_tags_changed" and e["state"] == "done":
            row = e["new"] or e["old"]
            expected[row["tag_id"]] += 1 if e["operation"] == "INSERT" else -1
    counts = dict(Tag.objects.values_list("id", "post_count"))
    assert counts == {t.pk: expected[t.pk] for t in tags}

    # Every email delivered; none for a dead event; doubles only from in-flight batches.
    done_comments = {
        e["id"] for e in events if e["channel"] == "comment_created" and e["state"] == "done"
    }
    received = Counter(smtp.mailbox.event_ids())
    assert set(received) == done_comments, "no email missing, none for a dead event"
    doubles = sum(n - 1 for n in received.values())
    # At least once for SMTP: a batch in flight when its worker died sends again.
    in_flight_bound = (disruptions["kill"] + disruptions["terminate"] * 4) * BATCH
    assert doubles <= in_flight_bound

    print(
        f"\nchaos seed {SEED}: {len(events)} events ({states['done']} done, {states['dead']} "
        f"dead as planned), disruptions {dict(disruptions)}, emails {sum(received.values())} "
        f"for {len(done_comments)} comments ({doubles} sent twice by batches in flight)"
    )


POISON = {"exit": 2, "nul": 3, "orm": 3}  # events of each kind of poison in the stream


@pytest.mark.parametrize(
    "slots", [(), ("--concurrency", "4")], ids=["processes", "processes-with-handler-slots"]
)
def test_poison_events_never_stall_the_queue_and_die_alone(
    tmp_path: Path, slots: tuple[str, ...]
) -> None:
    """A stream with events that kill their worker, raise a NUL in their error, or run past
    their timeout inside the ORM, among innocent and slow ones, while a listener is stopped
    with SIGTERM mid-batch and started again. The queue keeps moving, exactly the poison
    events die, every other event's database effect happens once, and restarts are bounded
    by CRASH_LIMIT per killer."""
    from eventbus import conf
    from tests import poison

    rng = random.Random(SEED)
    kinds = ["ok"] * 240 + ["slow"] * 30 + [k for k, n in POISON.items() for _ in range(n)]
    rng.shuffle(kinds)
    with connection.cursor() as cursor:
        cursor.execute(poison.CREATE_EFFECT_TABLE)
    records = EventRecord.objects.bulk_create(
        EventRecord(channel="containment_chaos", operation="PUBLISH", table_name="", new={"do": k})
        for k in kinds
    )
    kind_of = {r.pk: k for r, k in zip(records, kinds, strict=True)}
    env = manage_env(
        EVENTBUS_LISTENER_MODULES="listeners,tests.poison",
        EVENTBUS_HANG_GRACE="5",
        EVENTBUS_SHUTDOWN_TIMEOUT="8",
    )
    logs = iter(tmp_path / f"listen-{i}.log" for i in range(100))
    args = ("--processes", "2", "--batch-size", "20", "--poll-interval", "0.2", *slots)
    steady = Listener(next(logs), *args, env=env)
    restarted = [Listener(next(logs), *args, env=env)]

    def finished() -> int:
        return EventRecord.objects.filter(state__in=["done", "dead"]).count()

    try:
        for _ in range(3):  # SIGTERM while slow handlers run; nothing may be lost or redone
            progress = finished()
            wait_until(lambda p=progress: finished() > p, 30, what="the queue to keep moving")
            restarted[-1].wait_started(2)  # stop a running listener, not a starting one
            assert restarted[-1].terminate(timeout=20) == 0
            restarted.append(Listener(next(logs), *args, env=env))
        wait_until(
            lambda: not EventRecord.objects.filter(state__in=["pending", "failed"]).exists(),
            90,
            interval=0.2,
            what="every event done or dead",
        )
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT event_id, count(*) FROM {poison.EFFECT_TABLE} GROUP BY 1")
            effects = dict(cursor.fetchall())
    finally:
        steady.stop()
        for listener in restarted:
            listener.stop()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {poison.EFFECT_TABLE}")

    rows = {r.pk: r for r in EventRecord.objects.filter(channel="containment_chaos")}
    dead = {i for i, r in rows.items() if r.state == "dead"}
    poisoned = {i for i, k in kind_of.items() if k in POISON}
    assert dead == poisoned, [
        (i, kind_of[i], rows[i].attempts, rows[i].last_error.splitlines()[0])
        for i in sorted(dead ^ poisoned)
    ]
    for i in dead:
        expected = {
            "exit": "worker died while handling this event",
            "nul": "RuntimeError: callback server answered EVIL\ufffd",
            "orm": "HandlerTimeout: handler ran longer than 1 s",
        }[kind_of[i]]
        assert expected in rows[i].last_error, (kind_of[i], rows[i].last_error)
    assert {i: effects.get(i) for i in rows if i not in dead} == dict.fromkeys(
        set(rows) - dead, 1
    ), "every other event's database effect exactly once"
    assert not any(effects.get(i) for i in dead), "a dead event's effects rolled back"
    restarts = sum(
        path.read_text().count("exited with code") for path in tmp_path.glob("listen-*.log")
    )
    assert restarts <= conf.get().CRASH_LIMIT * POISON["exit"], restarts
