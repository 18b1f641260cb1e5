"""Channels with trivial handlers, for measuring the engine itself."""

from django.db import connection

from eventbus import Channel, Event

bench_noop = Channel("bench_noop", operations=(), isolation="batch")  # no effects at all
bench_noop_isolated = Channel("bench_noop_isolated", operations=())  # a savepoint per event
# A savepoint per event that writes one row: each is a subtransaction with its own xid.
bench_write_row = Channel("bench_write_row", operations=())

# Created by bench/subtransactions.py. top_xid is the claim transaction's own xid, so rows
# per top_xid = writing savepoints in one transaction (over 64 overflows the subxid cache).
ROW_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_row (id bigserial PRIMARY KEY, event_id bigint NOT NULL, "
    "top_xid bigint NOT NULL DEFAULT txid_current())"
)


@bench_noop.on
def noop(event: Event) -> None:
    """Does nothing: what is measured is claiming, savepoints and marking."""


@bench_noop_isolated.on
def noop_isolated(event: Event) -> None:
    """The same, with the default per-event savepoint."""


@bench_write_row.on
def write_row(event: Event) -> None:
    """One insert in the event's own savepoint, as a typical database handler makes."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_row (event_id) VALUES (%s)", [event.id])
