"""Every query the engine runs against the event table, in one place.

Identifiers and fixed states are composed with ``psycopg.sql``; values are parameters.
States are inlined as literals on purpose: the partial indexes (``WHERE state IN
('pending', 'failed')``) can only serve a query whose predicate names the literals.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg import sql

from eventbus.event import DEAD, DONE, FAILED, PENDING, RUNNABLE
from eventbus.running import followers
from eventbus.storing.layout import COLUMNS

TABLE = sql.Identifier("eventbus_event")
LEDGER = sql.Identifier("eventbus_inflight")  # the crash ledger, eventbus.models.InflightRecord


# The claim selects created_at as epoch seconds: Django's timestamptz loader is pure
# Python and was a tenth of a worker's time; the float converts in C (Event.from_row).
# It selects the payloads as text: psycopg's json loader (a Python call per value, and
# bytes decoded twice) was 0.9 ms of a 500-event batch, three times what decoding the
# text in Event.from_row costs (bench/batch_phases.py).
@dataclass(frozen=True)
class Scope:
    """Which events a claim may take.

    Listeners claim runnable events that are due. ``recover`` ignores ``run_after``
    (``due_only=False``), may take dead ones, walks ids in order (``after_id``) and stops
    at the newest id that existed when it began (``upto_id``).
    """

    states: tuple[str, ...] = RUNNABLE
    channels: tuple[str, ...] | None = None
    ids: tuple[int, ...] | None = None
    since: datetime | None = None
    after_id: int | None = None
    upto_id: int | None = None
    due_only: bool = True
    ordered_channels: tuple[str, ...] = ()  # one event at a time per key, in id order
    exclude_ids: tuple[int, ...] = ()  # already attempted by this replay
    keys: tuple[str, ...] | None = None  # operators: one order's, one post's events
    collection: int | None = None  # one collection's events (eventbus.collection)


# The claim must walk the runnable index in id order and stop after `limit` rows. With
# stale statistics (a queue table is emptied and refilled faster than autovacuum
# analyzes it) the planner instead bitmap-scans every runnable row and sorts them: 130 ms
# a claim at 125,000 pending, measured. These settings pin the plan for the claim
# statement only; the executor restores them before handlers run.
PIN_CLAIM_PLAN = sql.SQL("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off")


def pin_claim_plan(idle_timeout_ms: int) -> sql.Composed:
    """PIN_CLAIM_PLAN, plus a server-side limit on how long the claim transaction may sit
    idle between statements (a worker that hung mid-batch releases its locks)."""
    return sql.SQL("{}; SET LOCAL idle_in_transaction_session_timeout = {}").format(
        PIN_CLAIM_PLAN, sql.Literal(idle_timeout_ms)
    )


# The marks find their rows by id. Left to itself the planner reads a queue slot whole
# when its statistics call it small (a slot filled since its last ANALYZE), or when it
# plans for a prepared statement's generic parameters: 4.8 ms instead of 2.2 for a batch
# of 500 among 30,000 rows, measured, and linear in the slot's size.
# Unpinning restores what the transaction had before, not the default: a mark may run
# in a caller's transaction (eventbus.testing.run_events) that set its own.
PIN_MARK_PLAN = sql.SQL(
    "SELECT set_config('eventbus.seqscan', current_setting('enable_seqscan'), true); "
    "SET LOCAL enable_seqscan = off"
)
UNPIN_MARK_PLAN = sql.SQL(
    "SELECT set_config('enable_seqscan', current_setting('eventbus.seqscan'), true)"
)


def mark_pinned(mark_query: sql.Composable) -> sql.Composed:
    """A mark between its pinning and unpinning, as one string of statements, for a
    cursor that binds parameters on the client: no round trip of their own."""
    return sql.SQL("{}; {}; {}").format(PIN_MARK_PLAN, mark_query, UNPIN_MARK_PLAN)


UNPIN_CLAIM_PLAN = sql.SQL("SET LOCAL enable_bitmapscan = DEFAULT; SET LOCAL enable_sort = DEFAULT")


def claim_pinned(pin: sql.Composable, claim_query: sql.Composable) -> sql.Composed:
    """The pinning, the claim and the unpinning as one string of statements, for a cursor
    that binds parameters on the client: one round trip instead of three."""
    return sql.SQL("{}; {}; {}").format(pin, claim_query, UNPIN_CLAIM_PLAN)


def claim(scope: Scope, limit: int, inline: int = 2**62) -> tuple[sql.Composed, dict[str, Any]]:
    """Lock and return up to `limit` events of `scope`, oldest first, skipping locked ones.

    Each row: the event's columns (``Event.from_row``: its cause and collection last),
    with a payload larger than `inline` bytes left out (fetched by `payloads` just before
    its handler runs, so a batch of large rows cannot exhaust memory); whether it was
    left out; and the event's transient errors so far.
    """
    where, params = _where(scope)
    query = sql.SQL(
        "SELECT e.id, e.channel, e.operation, e.table_name, e.key, "
        "CASE WHEN s.bytes > %(inline)s THEN NULL ELSE e.old::text END, "
        "CASE WHEN s.bytes > %(inline)s THEN NULL ELSE e.new::text END, "
        "extract(epoch FROM e.created_at)::float8, e.attempts, "
        "e.caused_by, coalesce(e.correlation_id, e.id), "
        "s.bytes > %(inline)s, e.transient_errors "
        "FROM {table} AS e CROSS JOIN LATERAL (SELECT coalesce(octet_length(e.old::text), 0) "
        "+ coalesce(octet_length(e.new::text), 0) AS bytes) AS s "
        "WHERE {where} ORDER BY e.id LIMIT %(limit)s FOR UPDATE OF e SKIP LOCKED"
    ).format(table=TABLE, where=where)
    return query, {**params, "limit": limit, "inline": inline}


def payloads(ids: Sequence[int]) -> tuple[sql.Composed, list[Any]]:
    """The payloads a claim left out for their size (see `claim`), as text: the worker
    decodes each alone (``Event.from_row``), so one that cannot be is that event's error."""
    query = sql.SQL("SELECT id, old::text, new::text FROM {table} WHERE id = ANY(%s)").format(
        table=TABLE
    )
    return query, [list(ids)]


# --- The crash ledger, written on a second, autocommitted connection (eventbus.running.ledger) ----


def int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers: for large id lists, several times cheaper
    to send than psycopg's adaptation of a Python list (cast it in the query)."""
    return "{" + ",".join(map(str, values)) + "}"


# Record a batch's starts as one row, delete the worker's previous row (it committed),
# and return the new row's id with, for each event of the batch, the starts that other
# rows already hold for it at its current attempts: unfinished starts (a worker died).
# Rows hold runs of consecutive ids (see eventbus.models.InflightRecord); so do the
# parameters, and the overlap of two runs is expanded only where runs meet, which is
# only after a crash.
_LEDGER_FOUND = (
    "ours AS (SELECT * FROM unnest(%(firsts)s::bigint[], %(lasts)s::bigint[], "
    "%(attempts)s::int[]) AS o(first_id, last_id, attempts)), "
    # Each row says whether its worker still looks alive (a recent heartbeat from the same
    # process that wrote it): such a row is no crash (its worker lost its connection, and
    # takes its start back itself once it reconnects), unless the caller sees that
    # worker's process is gone. A row under the caller's own name but not its last one
    # was written by a dead namesake (a reused pid).
    # A worker running handler slots (listen --concurrency) writes as "host:pid#slot":
    # its siblings' rows are alive while the process's heartbeat row is.
    "theirs AS (SELECT r.*, b.worker, b.worker <> %(worker)s AND EXISTS (SELECT 1 "
    "FROM {workers} AS w WHERE w.name = split_part(b.worker, '#', 1) "
    "AND w.started_at <= b.started_at "
    "AND w.last_seen > now() - make_interval(secs => %(alive)s)) "
    "AS alive FROM {ledger} AS b CROSS JOIN LATERAL unnest(b.first_ids, b.last_ids, "
    "b.attempts) AS r(first_id, last_id, attempts) WHERE b.id <> %(previous)s), "
    "unfinished AS (SELECT g.id, t.worker, t.alive FROM ours AS o JOIN theirs AS t "
    "ON t.attempts = o.attempts AND t.first_id <= o.last_id AND t.last_id >= o.first_id "
    "CROSS JOIN LATERAL generate_series(greatest(o.first_id, t.first_id), "
    "least(o.last_id, t.last_id)) AS g(id)) "
    "SELECT (SELECT id FROM added), array_agg(unfinished.id), "
    "array_agg(unfinished.worker), array_agg(unfinished.alive) FROM unfinished"
)
LEDGER_START = sql.SQL(
    "WITH finished AS (DELETE FROM {ledger} WHERE id = %(previous)s), "
    "added AS (INSERT INTO {ledger} (worker, first_ids, last_ids, attempts) "
    "VALUES (%(worker)s, %(firsts)s::bigint[], %(lasts)s::bigint[], %(attempts)s::int[]) "
    "RETURNING id), " + _LEDGER_FOUND
).format(ledger=LEDGER, workers=sql.Identifier("eventbus_worker"))
# The same question without recording a start: are any of these events suspects? (A
# handler slot asks first, so that a suspect's start is never on record while its
# process's other slots run handlers; see eventbus.running.quarantine.)
LEDGER_PEEK = sql.SQL(
    "WITH added AS (SELECT NULL::bigint AS id WHERE false), " + _LEDGER_FOUND
).format(ledger=LEDGER, workers=sql.Identifier("eventbus_worker"))

LEDGER_FORGET = sql.SQL("DELETE FROM {ledger} WHERE id = %s").format(ledger=LEDGER)
# A worker's rows, its handler slots' ("host:pid#slot") included.
LEDGER_FORGET_WORKER = sql.SQL("DELETE FROM {ledger} WHERE split_part(worker, '#', 1) = %s").format(
    ledger=LEDGER
)


def ledger_collect(age: float) -> tuple[sql.Composed, list[Any]]:
    """Delete ledger rows older than `age` seconds of which no event is still runnable
    with the attempts it had when it started: finished batches that a worker did not get
    to delete, and crashed ones now resolved."""
    query = sql.SQL(
        "DELETE FROM {ledger} AS b WHERE b.started_at < now() - make_interval(secs => %s) "
        "AND NOT EXISTS (SELECT 1 FROM unnest(b.first_ids, b.last_ids, b.attempts) "
        "AS r(first_id, last_id, attempts) JOIN {table} AS e ON e.id BETWEEN r.first_id "
        "AND r.last_id AND e.attempts = r.attempts WHERE {runnable})"
    ).format(ledger=LEDGER, table=TABLE, runnable=_in("e.state", RUNNABLE))
    return query, [age]


def ledger_start(
    worker: str,
    started: Sequence[tuple[int, int]],
    previous: int,
    alive_within: float = 30.0,
    peek: bool = False,
) -> tuple[sql.Composed, dict[str, Any]]:
    """Record a batch's starts, (event id, attempts so far) in id order, as one row of
    runs, and delete the worker's previous row, which committed: one round trip.
    `peek`: only ask which of them have unfinished starts; record nothing."""
    firsts: list[int] = []
    lasts: list[int] = []
    attempts: list[int] = []
    for event_id, tries in started:
        if lasts and event_id == lasts[-1] + 1 and tries == attempts[-1]:
            lasts[-1] = event_id
        else:
            firsts.append(event_id)
            lasts.append(event_id)
            attempts.append(tries)
    return (LEDGER_PEEK if peek else LEDGER_START), {
        "worker": worker,
        "firsts": int_array(firsts),
        "lasts": int_array(lasts),
        "attempts": int_array(attempts),
        "previous": previous,
        "alive": alive_within,
    }


def count_by_channel_and_state(scope: Scope) -> tuple[sql.Composed, dict[str, Any]]:
    where, params = _where(scope)
    query = sql.SQL(
        "SELECT e.channel, e.state, count(*) FROM {table} AS e WHERE {where} "
        "GROUP BY e.channel, e.state ORDER BY e.channel, e.state"
    ).format(table=TABLE, where=where)
    return query, params


def count_unresolved(scope: Scope, touched: Sequence[int]) -> tuple[sql.Composed, dict[str, Any]]:
    """Failed or dead events that were in `scope`, or that a replay touched (ids)."""
    base = replace(scope, states=(FAILED, DEAD), due_only=False, ordered_channels=())
    where, params = _where(base)
    query = sql.SQL(
        "SELECT count(*) FROM {table} AS e "
        "WHERE {where} AND ({in_scope} OR e.id = ANY(%(touched)s))"
    ).format(table=TABLE, where=where, in_scope=_in("e.state", scope.states))
    return query, {**params, "touched": list(touched)}


def ids_in(scope: Scope) -> tuple[sql.Composed, dict[str, Any]]:
    """Ids of the events of `scope`, oldest first (what a replay may still take)."""
    where, params = _where(scope)
    query = sql.SQL("SELECT e.id FROM {table} AS e WHERE {where} ORDER BY e.id").format(
        table=TABLE, where=where
    )
    return query, params


def newest_ids(scope: Scope, limit: int) -> tuple[sql.Composed, dict[str, Any]]:
    """Ids of the newest `limit` events of `scope` (what `events` lists)."""
    where, params = _where(replace(scope, due_only=False, ordered_channels=()))
    query = sql.SQL(
        "SELECT e.id FROM {table} AS e WHERE {where} ORDER BY e.id DESC LIMIT %(limit)s"
    ).format(table=TABLE, where=where)
    return query, {**params, "limit": limit}


# --- Collections (eventbus.declaring.collections) ---------------------------------------


def open_collection(join: int | None) -> tuple[sql.Composed, list[Any]]:
    """Set the transaction's collection (`join`, or a new id from the event sequence);
    returns it and the setting it replaced."""
    query = sql.SQL(
        "WITH p AS MATERIALIZED (SELECT coalesce(current_setting('eventbus.correlation', "
        "true), '') AS previous) SELECT set_config('eventbus.correlation', coalesce(%s, "
        "nextval(pg_get_serial_sequence({table}, 'id')))::text, true)::bigint, p.previous "
        "FROM p"
    ).format(table=sql.Literal("eventbus_event"))
    return query, [join]


def close_collection(previous: str) -> tuple[sql.SQL, list[Any]]:
    return sql.SQL("SELECT set_config('eventbus.correlation', %s, true)"), [previous]


# Tables with triggers of any kind (a channel's, or one that may write to such a table):
# a handler's write elsewhere makes no event (eventbus.running.savepoints).
TRIGGERED_TABLES = (
    "SELECT DISTINCT c.relname FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid "
    "WHERE NOT t.tgisinternal"
)


def max_id() -> sql.Composed:
    return sql.SQL("SELECT coalesce(max(id), 0) FROM {table}").format(table=TABLE)


def events_after(after_id: int) -> tuple[sql.Composed, list[Any]]:
    """Events with an id above `after_id`, oldest first, as ``Event.from_row`` reads them
    (``eventbus.testing``: what a block of code wrote)."""
    query = sql.SQL(
        "SELECT id, channel, operation, table_name, key, old::text, new::text, created_at, "
        "attempts, caused_by, coalesce(correlation_id, id) FROM {table} WHERE id > %s "
        "ORDER BY id"
    ).format(table=TABLE)
    return query, [after_id]


# --- Following (eventbus.operating.follow) ------------------------------------------------

# What a follower shows of an event: its first error line only (errors run to 8,000 chars).
_FOLLOWED = sql.SQL(
    "SELECT e.id, e.channel, e.key, e.state, e.attempts, e.run_after, "
    "split_part(e.last_error, E'\\n', 1), e.caused_by, coalesce(e.correlation_id, e.id) "
    "FROM {table} AS e"
).format(table=TABLE)


def _followed_where(
    channels: Sequence[str] | None, keys: Sequence[str] | None, collection: int | None
) -> tuple[list[sql.Composable], dict[str, Any]]:
    parts: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if channels is not None:
        parts.append(_channel_in("e.channel", sql.SQL("%(channels)s")))
        params["channels"] = list(channels)
    if keys is not None:
        parts.append(sql.SQL("e.key = ANY(%(keys)s)"))
        params["keys"] = list(keys)
    if collection is not None:  # the root is found by id, the others by the index
        parts.append(sql.SQL("(e.id = %(collection)s OR e.correlation_id = %(collection)s)"))
        params["collection"] = collection
    return parts, params


def followed_newest(
    channels: Sequence[str] | None,
    keys: Sequence[str] | None,
    collection: int | None,
    limit: int | None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The newest `limit` (None: all) followed events, newest first: a follower's start."""
    parts, params = _followed_where(channels, keys, collection)
    where = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
    query = sql.SQL("{} WHERE {} ORDER BY e.id DESC LIMIT %(limit)s").format(_FOLLOWED, where)
    return query, {**params, "limit": limit}


def followed_changes(
    ids: Sequence[int],
    after_id: int,
    channels: Sequence[str] | None,
    keys: Sequence[str] | None,
    collection: int | None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """Followed events that may have changed: `ids` (the unfinished ones a follower
    watches) and any followed event above `after_id`, oldest first."""
    parts, params = _followed_where(channels, keys, collection)
    new = sql.SQL(" AND ").join([sql.SQL("e.id > %(after)s"), *parts])
    query = sql.SQL("{} WHERE e.id = ANY(%(ids)s) OR ({}) ORDER BY e.id").format(_FOLLOWED, new)
    return query, {**params, "ids": list(ids), "after": after_id}


def _in(column: str, values: Sequence[str]) -> sql.Composable:
    return sql.SQL("{} IN ({})").format(
        sql.SQL(column), sql.SQL(", ").join(map(sql.Literal, values))
    )


def _channel_in(column: str, names: sql.Composable) -> sql.Composable:
    """The one place a channel filter is built: `column` is one of the array `names`.

    Every query that selects events by channel name (claims, recover, `events`, purge,
    and the check that a name exists in the table) goes through here, so a name that
    later stands for several stored queues changes in this function only.
    """
    return sql.SQL("{} = ANY({})").format(sql.SQL(column), names)


def _where(scope: Scope) -> tuple[sql.Composable, dict[str, Any]]:
    parts: list[sql.Composable] = [_in("e.state", scope.states)]
    params: dict[str, Any] = {}
    if scope.due_only:
        parts.append(sql.SQL("e.run_after <= statement_timestamp()"))
    if scope.channels is not None:
        parts.append(_channel_in("e.channel", sql.SQL("%(channels)s")))
        params["channels"] = list(scope.channels)
    if scope.keys is not None:
        parts.append(sql.SQL("e.key = ANY(%(keys)s)"))
        params["keys"] = list(scope.keys)
    if scope.collection is not None:
        parts.append(sql.SQL("(e.id = %(collection)s OR e.correlation_id = %(collection)s)"))
        params["collection"] = scope.collection
    if scope.ids is not None:
        parts.append(sql.SQL("e.id = ANY(%(ids)s)"))
        params["ids"] = list(scope.ids)
    if scope.since is not None:
        parts.append(sql.SQL("e.created_at >= %(since)s"))
        params["since"] = scope.since
    if scope.after_id is not None:
        parts.append(sql.SQL("e.id > %(after_id)s"))
        params["after_id"] = scope.after_id
    if scope.exclude_ids:
        parts.append(sql.SQL("e.id <> ALL(%(exclude_ids)s)"))
        params["exclude_ids"] = list(scope.exclude_ids)
    if scope.upto_id is not None:
        parts.append(sql.SQL("e.id <= %(upto_id)s"))
        params["upto_id"] = scope.upto_id
    if scope.ordered_channels:
        # An event of an ordered channel waits while an older event of its key is runnable
        # (pending, in flight in another worker, or failed and waiting for its retry).
        parts.append(
            sql.SQL(
                "(e.channel <> ALL(%(ordered)s) OR NOT EXISTS (SELECT 1 FROM {table} AS o "
                "WHERE o.ordered AND o.channel = e.channel AND o.key = e.key AND o.id < e.id "
                "AND {runnable}))"
            ).format(table=TABLE, runnable=_in("o.state", RUNNABLE))
        )
        params["ordered"] = list(scope.ordered_channels)
    return sql.SQL(" AND ").join(parts), params


# --- Marks: every state change the engine makes moves the row (eventbus.storing) --------
#
# A mark deletes the event where it is and inserts it again, same id, with its new
# state: a done event lands in the history partition of its finish time, a dead one
# among the dead letters, a failed one in the queue's current slot. A claim that meets
# a deleted row skips it, as it skips a locked one (an UPDATE that moved the row between
# partitions would make that claim fail instead). The DELETE names the states the
# events were claimed in, so that it looks only where they can be (the queue, unless a
# replay took history).


def _moved(changes: dict[str, str]) -> sql.Composable:
    """The columns of a moved event `e`, with `changes` (column: SQL expression)."""
    unknown = set(changes) - set(COLUMNS)
    if unknown:
        raise ValueError(f"not event columns: {sorted(unknown)}")
    return sql.SQL(", ").join(
        sql.SQL(changes[c]) if c in changes else sql.SQL("e.{}").format(sql.Identifier(c))
        for c in COLUMNS
    )


def _move(
    source: sql.Composable, changes: dict[str, str], join: str = "", ctes: str = ""
) -> sql.Composed:
    """WITH …, gone AS (DELETE the rows `source` selects) INSERT them again, changed."""
    return sql.SQL(
        "WITH {ctes}gone AS (DELETE FROM {table} AS e WHERE {source} RETURNING e.*) "
        "INSERT INTO {table} ({columns}) SELECT {values} FROM gone AS e {join}"
    ).format(
        ctes=sql.SQL(ctes),
        table=TABLE,
        source=source,
        columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        values=_moved(changes),
        join=sql.SQL(join),
    )


# Each done event with how long its last attempt took (seconds, in the order of ids).
_DONE_CHANGES = {
    "state": f"'{DONE}'",
    "attempts": "e.attempts + 1",
    "first_claimed_at": "coalesce(e.first_claimed_at, now())",
    "finished_at": "clock_timestamp()",
    "worker": "%(worker)s",
    "duration": "d.seconds",
}
_DONE_DURATIONS = (
    "d AS (SELECT * FROM unnest(%(id_list)s::bigint[], %(seconds)s::float8[]) AS d(id, seconds)), "
)

_ERROR_CHANGES = {
    "state": "f.state",
    "attempts": "e.attempts + 1",
    "first_claimed_at": "coalesce(e.first_claimed_at, now())",
    "finished_at": f"CASE WHEN f.state = '{DEAD}' THEN clock_timestamp() END",
    "run_after": "clock_timestamp() + make_interval(secs => f.delay)",
    "worker": "%(worker)s",
    "last_error": "f.error",
    "errors": "e.errors || jsonb_build_array(jsonb_build_object("
    "'attempt', e.attempts + 1, 'at', clock_timestamp(), 'worker', %(worker)s::text, "
    "'seconds', round(f.seconds::numeric, 4), 'error', left(f.error, %(entry_chars)s)))",
    "transient_errors": "e.transient_errors + f.transient::int",
}
_ERROR_OUTCOMES = (
    "f AS (SELECT * FROM unnest(%(ids)s::bigint[], %(states)s::text[], %(delays)s::float8[], "
    "%(errors)s::text[], %(transient)s::bool[], %(seconds)s::float8[]) "
    "AS f(id, state, delay, error, transient, seconds)), "
)


def _claimed_in(states: Sequence[str], ids: str) -> sql.Composable:
    # `= ANY` finds the rows by id in each partition the states allow, nowhere else.
    return sql.SQL("e.id = ANY({ids}) AND {states}").format(
        ids=sql.SQL(ids), states=_in("e.state", tuple(states))
    )


ERROR_ENTRY_CHARS = 2000


# --- The dashboard's rollup (eventbus.operating.rollup) ------------------------------------

ROLLUP = sql.Identifier("eventbus_rollup")


@dataclass(frozen=True)
class RollupRows:
    """A batch's outcomes per queue (sorted, each queue once), for the rollup that rides
    in the statement marking the batch: no round trip of its own. Each writer (a claim
    connection) adds to rows of its own, so listeners never wait on each other's rows."""

    writer: str
    queues: list[str]
    handled: list[int]
    failed: list[int]
    died: list[int]
    seconds: list[float]
    histograms: list[str]  # each an int_array literal of bucket counts

    def params(self) -> dict[str, Any]:
        return {
            "r_writer": self.writer,
            "r_queues": self.queues,
            "r_handled": self.handled,
            "r_failed": self.failed,
            "r_died": self.died,
            "r_seconds": self.seconds,
            "r_histograms": self.histograms,
        }


# Add a batch to its minute's rows: counts and seconds add up, histograms add bucket by
# bucket (a longer one, from a later release with more buckets, keeps its tail).
_ROLLUP_CTE = sql.SQL(
    "rollup AS (INSERT INTO {rollup} AS r "
    "(minute, queue, writer, handled, failed, died, seconds, histogram) "
    "SELECT date_trunc('minute', statement_timestamp()), t.queue, %(r_writer)s, t.handled, "
    "t.failed, "
    "t.died, t.seconds, t.histogram::int[] FROM unnest(%(r_queues)s::text[], "
    "%(r_handled)s::int[], %(r_failed)s::int[], %(r_died)s::int[], %(r_seconds)s::float8[], "
    "%(r_histograms)s::text[]) AS t(queue, handled, failed, died, seconds, histogram) "
    "ORDER BY t.queue "
    "ON CONFLICT (minute, queue, writer) DO UPDATE SET handled = r.handled + EXCLUDED.handled, "
    "failed = r.failed + EXCLUDED.failed, died = r.died + EXCLUDED.died, "
    "seconds = r.seconds + EXCLUDED.seconds, histogram = (SELECT coalesce(array_agg("
    "coalesce(h.a, 0) + coalesce(h.b, 0) ORDER BY h.n), '{{}}') FROM unnest(r.histogram, "
    "EXCLUDED.histogram) WITH ORDINALITY AS h(a, b, n)))"
).format(rollup=ROLLUP)


@dataclass(frozen=True)
class ErrorMark:
    event_id: int
    state: str
    delay: float
    error: str
    transient: bool = False
    seconds: float = 0.0  # how long the attempt took


def mark_done(
    worker: str,
    ids: Sequence[int],
    rollup: RollupRows | None = None,
    seconds: Sequence[float] | None = None,
    states: Sequence[str] = RUNNABLE,
) -> tuple[sql.Composed, Any]:
    """Make the events done, each with how long its attempt took (`seconds`, in the
    order of `ids`); `states`: those they were claimed in. With `rollup`, add the batch to
    the dashboard's rollup in the same statement (see `RollupRows`)."""
    params = {
        "worker": worker,
        # array literals: several times cheaper to send than adapted lists (see int_array)
        "id_list": int_array(ids),
        "seconds": "{" + ",".join(f"{s:.6g}" for s in seconds) + "}"
        if seconds is not None
        else "{" + ",".join("NULL" for _ in ids) + "}",
    }
    ctes = _DONE_DURATIONS
    if rollup is not None:
        ctes = _ROLLUP_CTE.as_string(None) + ", " + ctes
        params = {**params, **rollup.params()}
    query = _move(
        _claimed_in(states, "%(id_list)s::bigint[]"), _DONE_CHANGES, "JOIN d ON d.id = e.id", ctes
    )
    return query, params


def mark_errors(
    worker: str,
    marks: Sequence[ErrorMark],
    rollup: RollupRows | None = None,
    states: Sequence[str] = RUNNABLE,
) -> tuple[sql.Composed, dict[str, Any]]:
    """Record each failed attempt: new state, when to run again, and the error history;
    `states`: those the events were claimed in. With `rollup`, add the batch to the
    dashboard's rollup in the same statement."""
    params = {
        "worker": worker,
        "entry_chars": ERROR_ENTRY_CHARS,
        "ids": int_array(m.event_id for m in marks),
        "states": [m.state for m in marks],
        "delays": [float(m.delay) for m in marks],  # RetryLater(delay=30) is an int
        "errors": [m.error for m in marks],
        "transient": [m.transient for m in marks],
        "seconds": [float(m.seconds) for m in marks],
    }
    ctes = _ERROR_OUTCOMES
    if rollup is not None:
        ctes = _ROLLUP_CTE.as_string(None) + ", " + ctes
        params = {**params, **rollup.params()}
    query = _move(
        _claimed_in(states, "%(ids)s::bigint[]"), _ERROR_CHANGES, "JOIN f ON f.id = e.id", ctes
    )
    return query, params


# --- Operators: re-queue, purge, status ------------------------------------------------


def requeue(scope: Scope) -> tuple[sql.Composed, dict[str, Any]]:
    """Make failed or dead events of `scope` pending again, due now; one a worker holds
    (it is running: its outcome is on the way) is skipped, never waited for."""
    where, params = _where(replace(scope, due_only=False, ordered_channels=()))
    query = sql.SQL(
        "WITH t AS (SELECT e.id FROM {table} AS e WHERE {where} FOR UPDATE SKIP LOCKED) "
        "UPDATE {table} AS e SET state = {pending}, run_after = now(), finished_at = NULL "
        "FROM t WHERE e.id = t.id RETURNING e.id, e.channel"
    ).format(table=TABLE, pending=sql.Literal(PENDING), where=where)
    return query, params


# Tell followers (`events follow`) that states changed: one per transaction, at its commit.
NOTIFY_CHANGES = sql.SQL("SELECT pg_notify({}, '')").format(sql.Literal(followers.CHANGES))


# A follower arrived: workers start announcing (eventbus.running.followers).
NOTIFY_HELLO = sql.SQL("SELECT pg_notify({}, '')").format(sql.Literal(followers.HELLO))


def listen(channel: str) -> sql.Composed:
    """LISTEN on a NOTIFY channel, quoted (a follower's names hold a colon)."""
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


def notify_channels(channels: Sequence[str]) -> tuple[sql.Composed, list[Any]]:
    """Wake the listeners of these channels or queues (one wake-up per channel)."""
    return sql.SQL(
        "SELECT pg_notify('eventbus_' || c, '') "
        "FROM (SELECT DISTINCT split_part(q, ':', 1) AS c FROM unnest(%s::text[]) AS q) AS n"
    ), [sorted(set(channels))]


def _purgeable(scope: Scope, before: datetime | None) -> tuple[sql.Composable, dict[str, Any]]:
    """The events of `scope` older than `before`: finished then (done, dead), or written
    then (pending, failed, which have no finish time)."""
    where, params = _where(replace(scope, due_only=False, ordered_channels=()))
    if before is None:
        return where, params
    ages: list[sql.Composable] = []
    finished = [s for s in scope.states if s not in RUNNABLE]
    unfinished = [s for s in scope.states if s in RUNNABLE]
    if finished:  # served by the partial index on finished_at
        ages.append(sql.SQL("e.finished_at < %(before)s"))
    if unfinished:
        ages.append(sql.SQL("e.created_at < %(before)s"))
    if finished and unfinished:
        ages = [
            sql.SQL(
                "({} AND e.finished_at < %(before)s OR {} AND e.created_at < %(before)s)"
            ).format(_in("e.state", finished), _in("e.state", unfinished))
        ]
    return sql.SQL(" AND ").join([where, *ages]), {**params, "before": before}


def purge_batch(
    scope: Scope, before: datetime | None, limit: int
) -> tuple[sql.Composed, dict[str, Any]]:
    """Delete up to `limit` events of `scope` older than `before`; short transactions, no
    table lock, and never an event a worker holds (SKIP LOCKED)."""
    where, params = _purgeable(scope, before)
    finished_only = not set(scope.states) & set(RUNNABLE)
    order = sql.SQL("e.finished_at" if finished_only and before is not None else "e.id")
    query = sql.SQL(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} AS e WHERE {where} "
        "ORDER BY {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    ).format(table=TABLE, where=where, order=order)
    return query, {**params, "limit": limit}


def count_purgeable(scope: Scope, before: datetime | None) -> tuple[sql.Composed, dict[str, Any]]:
    """What `purge_batch` would delete, per (channel, state): a purge's dry run."""
    where, params = _purgeable(scope, before)
    query = sql.SQL(
        "SELECT e.channel, e.state, count(*) FROM {table} AS e WHERE {where} "
        "GROUP BY e.channel, e.state ORDER BY e.channel, e.state"
    ).format(table=TABLE, where=where)
    return query, params


def stored_channels(names: Sequence[str]) -> tuple[sql.Composed, dict[str, Any]]:
    """The stored queues of `names` (a removed channel's events stay behind): rows
    (name, queue), where a name matches its own queue and those of its subscriptions."""
    query = sql.SQL(
        "SELECT n, q.channel FROM unnest(%(names)s::text[]) AS n CROSS JOIN LATERAL "
        "(SELECT DISTINCT e.channel FROM {table} AS e WHERE {match} "
        "OR split_part(e.channel, ':', 1) = n) AS q ORDER BY 1, 2"
    ).format(table=TABLE, match=_channel_in("e.channel", sql.SQL("ARRAY[n]")))
    return query, {"names": list(names)}


# Every channel name in the table: for the error that lists the names that exist.
ALL_STORED_CHANNELS = sql.SQL("SELECT DISTINCT channel FROM {table} ORDER BY channel").format(
    table=TABLE
)


BACKLOG = sql.SQL(
    # Lag counts from when an event became due: a retry waiting out its backoff is not lag.
    "SELECT e.channel, count(*), coalesce(extract(epoch FROM now() - "
    "min(e.run_after) FILTER (WHERE e.run_after <= now())), 0) "
    "FROM {table} AS e WHERE {runnable} GROUP BY e.channel"
).format(table=TABLE, runnable=_in("e.state", RUNNABLE))


def claimed(ids: Sequence[int]) -> tuple[sql.Composed, list[Any]]:
    """Which of `ids` a worker's claim holds: its FOR UPDATE blocks a KEY SHARE lock."""
    query = sql.SQL(
        "SELECT id FROM {table} WHERE id = ANY(%s) AND id NOT IN "
        "(SELECT id FROM {table} WHERE id = ANY(%s) FOR KEY SHARE SKIP LOCKED)"
    ).format(table=TABLE)
    return query, [list(ids), list(ids)]


def waiting(ids: Sequence[int]) -> tuple[sql.Composed, list[Any]]:
    """Which of `ids` are pending and unclaimed now: lockable, and still pending when
    locked (a row a listener finished meanwhile fails the recheck, or is gone)."""
    query = sql.SQL(
        "SELECT id FROM {table} WHERE id = ANY(%s) AND state = {pending} FOR KEY SHARE SKIP LOCKED"
    ).format(table=TABLE, pending=sql.Literal(PENDING))
    return query, [list(ids)]


def trace_contexts(ids: Sequence[int]) -> tuple[sql.Composed, list[Any]]:
    """The trace contexts that `ids` carry (eventbus.integrations.tracing): read after the
    claim, and only when tracing is on, so the claim itself never pays for them."""
    query = sql.SQL(
        "SELECT id, traceparent FROM {table} WHERE id = ANY(%s) AND traceparent IS NOT NULL"
    ).format(table=TABLE)
    return query, [list(ids)]


# Alerts on death (eventbus.integrations.alerts): record `n` new deaths of a channel and
# decide, in one statement shared by all workers, whether they get an alert. One is due
# when the channel never had one or its last is `interval` seconds old; it then reports
# the deaths it covers besides its first (those suppressed since, and the rest of `n`).
# `reported` is -1 when no alert is due. (SET reads the row as it was before the update.)
_ALERT_DUE = "a.sent_at <= now() - make_interval(secs => %(interval)s)"
ADMIT_DEAD_ALERT = sql.SQL(
    "INSERT INTO {alerts} AS a (channel, sent_at, suppressed, reported) "
    "VALUES (%(channel)s, now(), 0, %(n)s - 1) "
    "ON CONFLICT (channel) DO UPDATE SET "
    f"sent_at = CASE WHEN {_ALERT_DUE} THEN now() ELSE a.sent_at END, "
    f"suppressed = CASE WHEN {_ALERT_DUE} THEN 0 ELSE a.suppressed + %(n)s END, "
    f"reported = CASE WHEN {_ALERT_DUE} THEN a.suppressed + %(n)s - 1 ELSE -1 END "
    "RETURNING a.reported"
).format(alerts=sql.Identifier("eventbus_dead_alert"))


WORKERS = sql.Identifier("eventbus_worker")

FORGET_WORKER = sql.SQL("DELETE FROM {workers} WHERE name = %s").format(workers=WORKERS)

# The supervisor's refresh of workers it sees making progress (eventbus.running.liveness).
VOUCH_FOR_WORKERS = sql.SQL("UPDATE {workers} SET last_seen = now() WHERE name = ANY(%s)").format(
    workers=WORKERS
)

# Workers of a host, and how long each has been silent: health names a hung one.
SILENT_WORKERS = sql.SQL(
    "SELECT name, pid, extract(epoch FROM now() - last_seen) FROM {workers} "
    "WHERE host = %(host)s AND last_seen <= now() - make_interval(secs => %(silence)s) "
    "ORDER BY name"
).format(workers=WORKERS)


def discard(ids: Sequence[int], reason: str) -> tuple[sql.Composed, dict[str, Any]]:
    """Make pending or failed events dead with `reason`; skip any a worker holds now."""
    source = sql.SQL(
        "e.id IN (SELECT id FROM {table} WHERE id = ANY(%(ids)s) AND {runnable} "
        "FOR UPDATE SKIP LOCKED) AND {runnable_e}"
    ).format(table=TABLE, runnable=_in("state", RUNNABLE), runnable_e=_in("e.state", RUNNABLE))
    changes = {
        "state": f"'{DEAD}'",
        "finished_at": "clock_timestamp()",
        "last_error": "%(reason)s",
        "errors": "e.errors || jsonb_build_array(jsonb_build_object('attempt', e.attempts, "
        "'at', clock_timestamp(), 'worker', NULL, 'error', %(reason)s::text))",
    }
    return sql.SQL("{} RETURNING id").format(_move(source, changes)), {
        "ids": list(ids),
        "reason": reason,
    }


def publish(
    channel: str,
    queues: Sequence[str],
    payload: dict[str, Any],
    key: str | None,
    notify: bool,
    ordered: bool = False,
) -> tuple[sql.Composed, list[Any]]:
    """Insert a published event, one row per queue (subscription), and its wake-up, in the
    caller's transaction. Returns the first row's id.

    Ordered: first the trigger's per-key transaction lock (channel.render_trigger_body), so
    publishers and writers of one key take turns and ids follow commit order. The lock is
    taken in a subquery (volatile, so never flattened) before the rows get their ids.
    """
    query = sql.SQL(
        "WITH e AS (INSERT INTO {table} (channel, operation, table_name, key, new, ordered) "
        "SELECT q, 'PUBLISH', '', %s, %s::json, %s FROM (SELECT CASE WHEN %s THEN "
        "pg_advisory_xact_lock(hashtextextended('eventbus:' || %s || ':' || %s, 0)) END) AS l, "
        "unnest(%s::text[]) WITH ORDINALITY AS u(q, n) ORDER BY n "
        "RETURNING id) "
        "SELECT min(e.id), CASE WHEN %s THEN pg_notify('eventbus_' || %s, '') END FROM e"
    ).format(table=TABLE)
    lock = ordered and key is not None
    return query, [
        *(key, json.dumps(payload), ordered),
        *(lock, channel, key),
        list(queues),
        *(notify, channel),
    ]


# What holds the xmin horizon back (eventbus.operating.horizon): sessions with a snapshot
# (except this one), prepared transactions, replication slots. Rows: kind, name, seconds
# held (NULL for a slot), xid age; oldest first.
HORIZON_HOLDERS = (
    "SELECT * FROM ("
    "SELECT 'session' AS kind, a.pid || ' (' || coalesce(nullif(a.application_name, ''), "
    "a.usename::text, '?') || ', ' || coalesce(a.state, '?') || ')' AS name, "
    "extract(epoch FROM now() - coalesce(a.xact_start, a.query_start)) AS seconds, "
    "age(a.backend_xmin) AS xid_age FROM pg_stat_activity AS a "
    "WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid() "
    "AND a.datname = current_database() "
    "UNION ALL SELECT 'prepared transaction', p.gid, extract(epoch FROM now() - p.prepared), "
    "age(p.transaction) FROM pg_prepared_xacts AS p "
    "UNION ALL SELECT 'replication slot', r.slot_name, NULL, "
    "greatest(age(r.xmin), age(r.catalog_xmin)) FROM pg_replication_slots AS r "
    "WHERE r.xmin IS NOT NULL OR r.catalog_xmin IS NOT NULL"
    ") AS h ORDER BY xid_age DESC, seconds DESC NULLS LAST"
)


HEALTH = sql.SQL(
    "SELECT count(*), extract(epoch FROM now() - max(last_seen)) FROM {workers} "
    "WHERE last_seen > now() - make_interval(secs => %(silence)s) "
    "AND (%(host)s::text IS NULL OR host = %(host)s)"
).format(workers=WORKERS)


# Which of the given tables migrations have not created yet.
MISSING_TABLES = "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NULL"


# --- Coverage: runnable events that no live listener handles (eventbus.declaring.wiring) ---------

# Heartbeat that also refreshes the channels: a crashed worker's row stays behind, and a
# later worker with the same host:pid (a restarted container) may handle other channels.
HEARTBEAT_WITH_CHANNELS = sql.SQL(
    "INSERT INTO {workers} (name, host, pid, channels, started_at, last_seen) "
    "VALUES (%s, %s, %s, %s, now(), now()) "
    "ON CONFLICT (name) DO UPDATE SET last_seen = now(), channels = EXCLUDED.channels, "
    # a new process under a reused name (a container restarted: same pids) starts anew,
    # so that the crash ledger can tell its rows from those of its dead namesake
    "started_at = CASE WHEN %s THEN now() ELSE {workers}.started_at END "
    # and whether anyone follows (eventbus.running.followers): no round trip of its own
    "RETURNING EXISTS (SELECT FROM pg_stat_activity WHERE application_name = %s "
    "AND datname = current_database())"
).format(workers=WORKERS)


def unhandled_backlog(live_within: float) -> tuple[sql.Composed, dict[str, Any]]:
    """Runnable events per channel that no worker seen in the last `live_within` s handles.

    Rows: channel, count, seconds the oldest due one has waited. A heartbeat's channels
    are comma-separated; ``*`` (written by releases before per-channel heartbeats, which
    claimed every channel) covers all. Counting happens before the anti-join, so its
    cost is that of BACKLOG, whatever the number of workers.
    """
    query = sql.SQL(
        "WITH covered AS (SELECT DISTINCT unnest(string_to_array(w.channels, ',')) AS channel "
        "FROM {workers} AS w WHERE w.last_seen > now() - make_interval(secs => %(live)s)), "
        "backlog AS (SELECT e.channel, count(*) AS n, coalesce(extract(epoch FROM now() - "
        "min(e.run_after) FILTER (WHERE e.run_after <= now())), 0) AS waited "
        "FROM {table} AS e WHERE {runnable} GROUP BY e.channel) "
        "SELECT b.channel, b.n, b.waited FROM backlog AS b WHERE NOT EXISTS "
        "(SELECT 1 FROM covered AS c WHERE c.channel IN (b.channel, '*')) ORDER BY b.channel"
    ).format(workers=WORKERS, table=TABLE, runnable=_in("e.state", RUNNABLE))
    return query, {"live": live_within}


# --- Backfill: subscriptions get the events written before they existed (operating.backfill) ---

# Backfills of one queue take turns: two at once would both see no copies, and both copy.
BACKFILL_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('eventbus:backfill:' || %s, 0))"

# A new subscription's copies of its channel's changes since a time that it does not hold
# yet. The changes are read from every other queue of the channel (its own name included),
# each change once: the rows of one change in sibling queues are alike but for their
# queue, so a change is its time, operation, table, key and rows. Runnable events still
# under the channel's own name are left to the listeners' fan-out, which gives them to
# every subscription. Copies keep their time and start pending.
_CHANGE = sql.SQL(
    "{t}.created_at, {t}.operation, {t}.table_name, {t}.key, "
    "md5(coalesce({t}.old::text, '')), md5(coalesce({t}.new::text, ''))"
)
BACKFILL = sql.SQL(
    "WITH source AS (SELECT DISTINCT ON ({change}) "
    "s.id, s.operation, s.table_name, s.key, s.old, s.new, s.ordered, s.created_at "
    "FROM {table} AS s WHERE split_part(s.channel, ':', 1) = %(channel)s "
    "AND s.channel <> %(queue)s AND (%(source)s::text IS NULL OR s.channel = %(source)s) "
    "AND NOT (s.channel = %(channel)s AND {runnable}) "
    "AND s.created_at >= %(since)s AND s.created_at < %(until)s "
    "AND NOT EXISTS (SELECT FROM {table} AS t WHERE t.channel = %(queue)s "
    "AND ({target_change}) = ({change})) "
    "ORDER BY {change}, s.id), "
    "copied AS (INSERT INTO {table} "
    "(channel, operation, table_name, key, old, new, ordered, created_at) "
    "SELECT %(queue)s, operation, table_name, key, old, new, ordered, created_at "
    "FROM source ORDER BY created_at, id RETURNING id) "
    "SELECT count(*), min(id), max(id) FROM copied"
).format(
    table=TABLE,
    change=_CHANGE.format(t=sql.SQL("s")),
    target_change=_CHANGE.format(t=sql.SQL("t")),
    runnable=_in("s.state", RUNNABLE),
)

# A channel that gained subscriptions: its runnable events written before (under the
# channel's own name, which no handler takes any more) become one event per subscription,
# in one statement, so none is lost or doubled. Events a listener holds are skipped (an
# older release may still be handling them); the next pass takes what is left.
FAN_OUT = sql.SQL(
    "WITH moved AS (DELETE FROM {table} AS e WHERE e.id IN (SELECT id FROM {table} "
    "WHERE channel = %(channel)s AND {runnable} ORDER BY id LIMIT %(limit)s "
    "FOR UPDATE SKIP LOCKED) AND {runnable_e} RETURNING e.*), "
    "copied AS (INSERT INTO {table} "
    "(channel, operation, table_name, key, old, new, ordered, created_at) "
    "SELECT q.queue, m.operation, m.table_name, m.key, m.old, m.new, m.ordered, m.created_at "
    "FROM moved AS m CROSS JOIN unnest(%(queues)s::text[]) WITH ORDINALITY AS q(queue, n) "
    "ORDER BY m.id, q.n RETURNING id) "
    "SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM copied)"
).format(table=TABLE, runnable=_in("state", RUNNABLE), runnable_e=_in("e.state", RUNNABLE))


# --- Installed triggers (eventbus.declaring.installed) -------------------------------------------

# Channel trigger functions that no trigger uses: left by a removal that dropped only the
# trigger (pgtrigger's prune, a migration written before eventbus dropped them too).
ORPHAN_TRIGGER_FUNCTIONS = (
    "SELECT p.proname FROM pg_proc AS p "
    "WHERE p.proname LIKE 'pgtrigger\\_eb\\_%%' AND pg_function_is_visible(p.oid) "
    "AND NOT EXISTS (SELECT FROM pg_trigger AS t WHERE t.tgfoid = p.oid) ORDER BY 1"
)


# Django 4.2 has no db_default: the eventbus migrations set the event tables' database
# defaults with these (eventbus.compat.set_database_defaults). Rendered to text for RunSQL.
def set_column_default(table: str, column: str, expression: str) -> str:
    """``ALTER TABLE … ALTER COLUMN … SET DEFAULT expression`` (a fixed SQL expression)."""
    return (
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}")
        .format(sql.Identifier(table), sql.Identifier(column), sql.SQL(expression))
        .as_string()
    )


def drop_column_default(table: str, column: str) -> str:
    """The reverse of :func:`set_column_default`."""
    return (
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT")
        .format(sql.Identifier(table), sql.Identifier(column))
        .as_string()
    )


# --- The dashboard: backlog samples, history, live counts (eventbus.operating.rollup) -----

# Once a minute, whichever listener comes first records each queue's runnable events in
# that minute's rows (0 for the queues it handles that have none). The others find the
# minute sampled and count nothing: the guard is a one-time filter ahead of the count.
ROLLUP_SAMPLE = sql.SQL(
    "WITH m AS (SELECT date_trunc('minute', statement_timestamp()) AS minute), "
    "fresh AS (SELECT m.minute FROM m WHERE NOT EXISTS (SELECT FROM {rollup} AS r "
    "WHERE r.minute = m.minute AND r.backlog IS NOT NULL)), "
    "counts AS (SELECT e.channel AS queue, count(*) AS n FROM {table} AS e "
    "WHERE {runnable} AND EXISTS (SELECT FROM fresh) GROUP BY e.channel), "
    "queues AS (SELECT queue FROM counts UNION SELECT unnest(%(queues)s::text[])) "
    "INSERT INTO {rollup} AS r "
    "(minute, queue, writer, handled, failed, died, seconds, histogram, backlog) "
    "SELECT f.minute, q.queue, '', 0, 0, 0, 0, '{{}}', coalesce(c.n, 0) FROM fresh AS f "
    "CROSS JOIN queues AS q LEFT JOIN counts AS c ON c.queue = q.queue ORDER BY q.queue "
    "ON CONFLICT (minute, queue, writer) DO UPDATE SET backlog = EXCLUDED.backlog"
).format(rollup=ROLLUP, table=TABLE, runnable=_in("e.state", RUNNABLE))

ROLLUP_PURGE = sql.SQL(
    "DELETE FROM {rollup} WHERE minute < statement_timestamp() - make_interval(secs => %s)"
).format(rollup=ROLLUP)

ROLLUP_NOW = (
    "SELECT date_trunc('minute', statement_timestamp()), "
    "extract(epoch FROM statement_timestamp() - date_trunc('minute', statement_timestamp()))"
)

# Per queue with rows in the last day: what it did in the last hour, and in the last few
# minutes (the rate).
ROLLUP_TOTALS = sql.SQL(
    "SELECT queue, coalesce(sum(handled) FILTER (WHERE minute >= %(hour)s), 0), "
    "coalesce(sum(failed) FILTER (WHERE minute >= %(hour)s), 0), "
    "coalesce(sum(died) FILTER (WHERE minute >= %(hour)s), 0), "
    "coalesce(sum(handled) FILTER (WHERE minute >= %(recent)s), 0) "
    "FROM {rollup} WHERE minute >= %(day)s GROUP BY queue"
).format(rollup=ROLLUP)

# Handler durations since a minute: attempts per (queue, bucket), buckets counted from 1.
ROLLUP_HISTOGRAMS = sql.SQL(
    "SELECT r.queue, h.n, sum(h.c) FROM {rollup} AS r "
    "CROSS JOIN LATERAL unnest(r.histogram) WITH ORDINALITY AS h(c, n) "
    "WHERE r.minute >= %(since)s GROUP BY r.queue, h.n"
).format(rollup=ROLLUP)

# One row per minute since a minute, over the queues given (NULL: all): handled, failed
# or dead attempts, and the backlog sampled then (NULL: no sample that minute).
ROLLUP_SERIES = sql.SQL(
    "SELECT minute, sum(handled), sum(failed + died), sum(backlog) FROM {rollup} "
    "WHERE minute >= %(since)s AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s)) "
    "GROUP BY minute ORDER BY minute"
).format(rollup=ROLLUP)

# Live, per queue: runnable, failed and dead events, and how long the oldest due one has
# waited (as BACKLOG). Each half is served by its partial index.
DASHBOARD_LIVE = sql.SQL(
    "SELECT e.channel, count(*), count(*) FILTER (WHERE e.state = {failed}), 0, "
    "coalesce(extract(epoch FROM now() - min(e.run_after) FILTER "
    "(WHERE e.run_after <= now())), 0) FROM {table} AS e WHERE {runnable} GROUP BY e.channel "
    "UNION ALL SELECT e.channel, 0, 0, count(*), 0 FROM {table} AS e "
    "WHERE e.state = {dead} GROUP BY e.channel"
).format(
    table=TABLE,
    runnable=_in("e.state", RUNNABLE),
    failed=sql.Literal(FAILED),
    dead=sql.Literal(DEAD),
)


# --- Paused channels and subscriptions (eventbus.operating.pauses) -------------------------

PAUSES = sql.Identifier("eventbus_pause")
PAUSES_CHANGED = "eventbus_pauses"  # the NOTIFY channel listeners re-read the pauses on

PAUSE = sql.SQL(
    "INSERT INTO {pauses} (name, paused_at, paused_by) VALUES (%s, now(), %s) "
    "ON CONFLICT (name) DO NOTHING RETURNING name"
).format(pauses=PAUSES)

# A channel's resume resumes its subscriptions paused on their own too.
RESUME = sql.SQL(
    "DELETE FROM {pauses} WHERE name = %(name)s OR split_part(name, ':', 1) = %(name)s "
    "RETURNING name"
).format(pauses=PAUSES)

PAUSED = sql.SQL("SELECT name, paused_at, paused_by FROM {pauses} ORDER BY name").format(
    pauses=PAUSES
)

NOTIFY_PAUSES_CHANGED = sql.SQL("SELECT pg_notify({}, '')").format(sql.Literal(PAUSES_CHANGED))
