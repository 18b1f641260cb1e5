"""Channels whose handlers misbehave on purpose, for tests/test_containment.py.

Listener processes load it with ``EVENTBUS_LISTENER_MODULES=listeners,tests.poison``; the
test process imports it too, for in-process ``Executor.run_batch`` runs.

Every handler leaves two countable effects:
- a row ``(event_id, note)`` in the plain table ``containment_effect`` (no unique
  constraint, so a repeated database effect shows as a second row); it commits only with
  the event's claim transaction;
- a line ``<event id>`` appended to the file named by the payload's ``effects`` key, if
  any: an external effect, which no rollback takes back.

What a handler does wrong is chosen per event by the payload's ``do`` key.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import time

from django.db import close_old_connections, connection, transaction

from blog.models import Tag
from eventbus import Channel, Event, RetryPolicy, prefetch

EFFECT_TABLE = "containment_effect"
CREATE_EFFECT_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {EFFECT_TABLE} "
    "(event_id bigint NOT NULL, note text NOT NULL DEFAULT '', pid int NOT NULL)"
)
NUL_TEXT = "callback server answered EVIL\x00 and hung up"
SURROGATE_TEXT = "cannot open caf" + b"\xe9".decode("utf-8", "surrogateescape") + ".txt"
GIVE_UP = 5.0  # seconds an overrunning handler runs if nothing stops it
NO_RETRY_SOON = RetryPolicy(max_attempts=2, base_delay=300, jitter=False)

# Any misbehaviour chosen by the payload: raise, exit the process.
plain = Channel("containment_plain", operations=(), retry=NO_RETRY_SOON)
# Sleeps (CONTAINMENT_SLEEP seconds, else the payload's "sleep"), then its effects.
slow = Channel("containment_slow", operations=(), timeout=30)
# Runs past a 50 ms timeout: in the ORM, in pure Python or in a query.
overrun = Channel("containment_overrun", operations=(), timeout=0.05, retry=RetryPolicy(1))
# A batch handler: 0.1 s per event, under a 0.5 s timeout (per event).
batch = Channel("containment_batch", operations=(), timeout=0.5, retry=RetryPolicy(1))
# Records the length and digest of the payload's "blob" it received.
payload = Channel("containment_payload", operations=(), retry=RetryPolicy(1))


def effect(event: Event, note: str = "") -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EFFECT_TABLE} (event_id, note, pid) VALUES (%s, %s, %s)",
            [event.id, note, os.getpid()],
        )
    path = (event.new or {}).get("effects")
    if path:
        with open(path, "a") as effects:
            effects.write(f"{event.id}\n")


@plain.on
def misbehave(event: Event) -> None:
    effect(event)
    do = event.new.get("do")
    if do == "nul":
        raise RuntimeError(NUL_TEXT)
    if do == "surrogate":
        raise OSError(SURROGATE_TEXT)
    if do == "exit":
        os._exit(1)  # as a segfault or the OOM killer would: no cleanup, no rollback sent
    if do == "close_old_connections":  # as a long-running job's housekeeping might
        close_old_connections()  # in the claim transaction it closes the connection
    if do == "close":
        connection.close()
    if do == "cursor":  # a server-side cursor left open by the error that ends the handler
        rows = Tag.objects.iterator(chunk_size=1)
        next(rows)
        raise ValueError("gave up half-way through the tags")
    if do == "gc":  # the cyclic garbage collector runs in the middle of this handler
        gc.collect()


@slow.on
def take_time(event: Event) -> None:
    started = (event.new or {}).get("started")
    if started:  # a line when the handler starts (its effects come at its end)
        with open(started, "a") as starts:
            starts.write(f"{event.id}\n")
    time.sleep(float(os.environ.get("CONTAINMENT_SLEEP") or event.new.get("sleep", 0)))
    effect(event)


@overrun.on
def overrun_limit(event: Event) -> None:
    """Runs past its 50 ms until stopped, or GIVE_UP seconds, then returns as if fine
    (so an engine that cannot stop it fails the test instead of hanging it)."""
    do = event.new.get("do")
    give_up = time.monotonic() + GIVE_UP
    n = 0
    if do == "fast":
        effect(event)
    elif do == "orm":  # Django's own atomic blocks and get_or_create, over and over
        while time.monotonic() < give_up:
            with transaction.atomic():
                Tag.objects.get_or_create(name=f"overrun-{event.id}-{n}")
                with transaction.atomic():
                    Tag.objects.filter(name=f"overrun-{event.id}-{n}").update(post_count=n)
            n += 1
    elif do == "python":
        while True:
            n += 1
            if n % 1_000_000 == 0 and time.monotonic() > give_up:
                break
    elif do == "query":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(%s)", [GIVE_UP])
    elif do == "block":  # one C call that nothing interrupts (a socket read with no timeout)
        time.sleep(GIVE_UP)
    else:
        raise ValueError(f"unknown behaviour {do!r}")
    if do != "fast":
        effect(event, "never stopped")


@batch.on_batch
def take_time_each(events: list[Event]) -> None:
    for event in events:
        time.sleep(0.1)
        effect(event)


@payload.on
def measure(event: Event) -> None:
    blob = event.new["blob"]
    effect(event, f"{len(blob)}:{hashlib.sha256(blob.encode()).hexdigest()}")


# Records what its handler received, as sorted JSON: "<old>|<new>".
spelling = Channel("containment_spelling", operations=(), retry=RetryPolicy(1))


@spelling.on
def record_payloads(event: Event) -> None:
    note = "|".join(json.dumps(p, sort_keys=True) for p in (event.old, event.new))
    with connection.cursor() as cursor:  # not effect(): a payload here may be no object
        cursor.execute(
            f"INSERT INTO {EFFECT_TABLE} (event_id, note, pid) VALUES (%s, %s, %s)",
            [event.id, note, os.getpid()],
        )


# Handled, or dead: each leaves a note, "handled" or "on_dead" (tests/test_review_15c.py).
hooked = Channel("containment_hooked", operations=(), retry=RetryPolicy(1))
hooked_batch = Channel("containment_hooked_batch", operations=(), retry=RetryPolicy(1))


@hooked.on
def handle_hooked(event: Event) -> None:
    effect(event, "handled")


@hooked_batch.on_batch
def handle_hooked_batch(events: list[Event]) -> None:
    for event in events:
        effect(event, "handled")


@hooked.on_dead
@hooked_batch.on_dead
def note_the_death(event: Event, error: str) -> None:
    effect(event, "on_dead")


# Its handler fails every event but the innocent ones (one attempt: they die at once);
# its on_dead hook kills the worker process for the events whose payload asks it to.
doomed = Channel("containment_doomed", operations=(), retry=RetryPolicy(1))


@doomed.on
def fail_unless_innocent(event: Event) -> None:
    effect(event)
    if event.new.get("do"):
        raise RuntimeError("this event is doomed")


@doomed.on_dead
def die_with_it(event: Event, error: str) -> None:
    if event.new.get("do") == "exit_on_dead":
        os._exit(2)


# isolation="batch": the batch's calls share one savepoint. Its handler raises what the
# payload asks for, including what is not an Exception (KeyboardInterrupt, SystemExit).
shared = Channel(
    "containment_shared",
    operations=(),
    isolation="batch",
    retry=RetryPolicy(max_attempts=3, base_delay=300, jitter=False),
)


@shared.on
def share_a_savepoint(event: Event) -> None:
    effect(event)
    do = event.new.get("do")
    if do == "interrupt":
        raise KeyboardInterrupt
    if do == "exit":
        sys.exit(3)


# The chaos suite's mix (tests/test_chaos.py): one attempt, so a poison event dies at once.
chaos = Channel("containment_chaos", operations=(), timeout=1.0, retry=RetryPolicy(1))


@chaos.on
def chaos_mix(event: Event) -> None:
    do = event.new.get("do")
    if do == "slow":
        time.sleep(0.3)
    effect(event)
    if do == "exit":
        os._exit(1)
    if do == "nul":
        raise RuntimeError(NUL_TEXT)
    if do == "orm":  # past its 1 s inside Django's atomic blocks, until stopped
        n = 0
        while True:
            with transaction.atomic():
                Tag.objects.get_or_create(name=f"chaos-{event.id}-{n}")
            n += 1


# Each handler waits until `meet` handlers have started (lines in the payload's "started"
# file), or GIVE_UP seconds: its note says whether they met, so a test sees handlers that
# ran at the same time without timing anything.
rendezvous = Channel("containment_rendezvous", operations=(), retry=RetryPolicy(1))


@rendezvous.on
def wait_for_the_others(event: Event) -> None:
    started, meet = event.new["started"], int(event.new["meet"])
    with open(started, "a") as starts:
        starts.write(f"{event.id}\n")
    give_up = time.monotonic() + GIVE_UP
    met = False
    while time.monotonic() < give_up:
        with open(started) as starts:
            if len(starts.read().split()) >= meet:
                met = True
                break
        time.sleep(0.01)
    effect(event, "met" if met else "alone")


# Savepoints opened at a handler's first query (eventbus.running.savepoints): what a
# handler does before, after or without any query. "commits" names a file that an
# on_commit callback appends the event id to.
lazy = Channel("containment_lazy", operations=(), retry=NO_RETRY_SOON)


@lazy.on
def query_late_or_never(event: Event) -> None:
    do = event.new.get("do", "")
    commits = event.new.get("commits")
    if commits:

        def committed() -> None:
            with open(commits, "a") as lines:
                lines.write(f"{event.id}\n")

        transaction.on_commit(committed)
    if do == "nothing":
        return
    if do == "select":  # its first statement opens the savepoint: its rows still come
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s::text || '%%'", [f"row of {event.id}"])
            (value,) = cursor.fetchone()
            cursor.execute("UPDATE blog_tag SET post_count = 0 WHERE name = %s", ["none"])
            effect(event, f"{value} {cursor.rowcount}")
        return
    if do == "raise":  # before any query
        raise RuntimeError("failed before any query")
    if do == "inner_atomic_then_raise":
        with transaction.atomic():
            effect(event, "inner")
        raise RuntimeError("failed after an inner atomic block")
    effect(event)
    if do == "effect_then_raise":
        raise RuntimeError("failed after its effect")


# What a handler's first statement may be, with a savepoint opened at it (review of
# issue 12): each must behave as inside Django's own atomic block.
first = Channel(
    "containment_first", operations=(), retry=RetryPolicy(3, base_delay=300, jitter=False)
)
# Past its 50 ms in a C call, then its only query: the deadline check must stop it.
late_query = Channel("containment_late_query", operations=(), timeout=0.05, retry=RetryPolicy(1))


@first.on
def first_statement(event: Event) -> None:
    do = event.new.get("do", "")
    path = event.new.get("runs")
    if path:
        with open(path, "a") as runs:
            runs.write(f"{event.id}\n")
    if do == "":
        effect(event)
    elif do == "executemany":
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {EFFECT_TABLE} (event_id, note, pid) VALUES (%s, %s, %s)",
                [[event.id, "many", 0]],
            )
    elif do == "iterator":  # a server-side cursor: its DECLARE must go as it came
        effect(event, ",".join(t.name for t in Tag.objects.order_by("name").iterator(1)))
    elif do == "syntax":
        with connection.cursor() as cursor:
            cursor.execute("SELEC 1")
    elif do == "bad_parameters":
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s, %s", [1])
    elif do == "create":  # INSERT … RETURNING: the new row's id comes back
        effect(event, str(Tag.objects.create(name=f"created-{event.id}").pk))
    elif do == "copy_in_atomic_then_raise":  # COPY bypasses execute wrappers: atomic first
        with transaction.atomic():
            copy_row(event)
        raise RuntimeError("failed after its COPY")
    elif do == "copy_then_raise":
        copy_row(event)
        raise RuntimeError("failed after its COPY")
    else:
        raise ValueError(f"unknown behaviour {do!r}")


def copy_row(event: Event) -> None:
    copy_sql = f"COPY {EFFECT_TABLE} (event_id, note, pid) FROM STDIN"
    with connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
        copy.write_row((event.id, "copy", 0))


@late_query.on
def sleep_then_write(event: Event) -> None:
    time.sleep(0.3)
    effect(event, "after its timeout")


# eventbus.prefetch: the loader records each call's event ids (in the test process).
prefetched = Channel("containment_prefetch", operations=(), retry=NO_RETRY_SOON)
loader_calls: list[list[int]] = []


@prefetch
def batch_ids(events: list[Event]) -> set[int]:
    ids = [event.id for event in events]
    loader_calls.append(ids)
    with connection.cursor() as cursor:  # a read, in the asking handler's savepoint
        cursor.execute("SELECT count(*) FROM eventbus_event WHERE id = ANY(%s)", [ids])
    return set(ids)


@prefetched.on
def use_the_batch_read(event: Event) -> None:
    seen = batch_ids(event)
    effect(event, "in its batch" if event.id in seen else "missing")
    if event.new.get("fail"):
        raise RuntimeError("failed after reading its batch")
