"""The claim reads only the queue, by index, when the table is mostly history (1,000,000
done events): history lives in partitions that the claim's states prune away."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from psycopg import sql

from eventbus import sql as queries
from eventbus.storing import layout

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def explain(query: sql.Composable, params: Any) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params)
        [[document]] = cursor.fetchall()
    plan = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
    return list(nodes(plan))


@pytest.fixture
def history() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, key, new, state, "
            "attempts, finished_at) SELECT 'comment_created', 'INSERT', 'blog_comment', "
            "(g % 1000)::text, '{}', 'done', 1, now() FROM generate_series(1, 1000000) AS g"
        )
        cursor.execute(
            "INSERT INTO eventbus_event (channel, operation, table_name, key, new) "
            "SELECT 'post_edited', 'UPDATE', 'blog_post', (g % 7)::text, '{}' "
            "FROM generate_series(1, 50) AS g"
        )
        cursor.execute("ANALYZE eventbus_event")


def scans(plan: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [
        (n["Node Type"], n["Relation Name"], n.get("Index Name"))
        for n in plan
        if "Relation Name" in n
    ]


QUEUE = set(layout.SLOTS)


def test_the_claim_reads_the_queue_by_index_and_never_history(history: None) -> None:
    query, params = queries.claim(queries.Scope(ordered_channels=("post_edited",)), 500)
    with connection.cursor() as cursor:
        cursor.execute(queries.PIN_CLAIM_PLAN)  # as the executor claims
    found = scans(explain(query, params))
    read = {relation for _, relation, _ in found}
    # The queue's slots, and the crash ledger looked up by its own primary key: never a
    # history partition, never the dead letters.
    assert read <= QUEUE | {"eventbus_inflight"}, found
    # Each slot is walked in id order by its index (the ordered-key check may read a
    # slot as the planner likes: the queue is small).
    walked = {relation for node, relation, index in found if index == f"{relation}_id_idx"}
    assert walked == QUEUE, found


def test_the_backlog_query_reads_only_the_queue(history: None) -> None:
    found = scans(explain(queries.BACKLOG, None))
    assert {relation for _, relation, _ in found} <= QUEUE, found


def test_a_mark_looks_for_its_events_in_the_queue_only(history: None) -> None:
    query, params = queries.mark_done("w", [1, 2, 3], None, [0.1, 0.1, 0.1])
    found = scans(explain(query, params))
    deleted_from = {r for node, r, _ in found if r not in ("eventbus_event",)}
    assert deleted_from <= QUEUE, found


def test_a_mark_finds_its_events_by_id_in_a_slot_that_filled_since_its_statistics() -> None:
    """The planner reads a slot whole when its statistics say it is small and the ids are
    bigints (4.8 ms instead of 2.2 for 500 among 30,000, and linear in the slot): every
    mark the executor sends is pinned to the id index. Here 30,000 events, ids past 2**31,
    arrive in a slot analyzed while empty; a batch is claimed and marked (64 events: each
    handler writes, in a savepoint of its own), and no queue slot was read whole in the
    transaction."""
    from eventbus.running.executor import Executor
    from tests import poison

    with connection.cursor() as cursor:
        cursor.execute(poison.CREATE_EFFECT_TABLE)
        cursor.execute("ANALYZE eventbus_event")
        cursor.execute(
            "INSERT INTO eventbus_event (id, channel, operation, table_name, new) "
            "SELECT 3000000000 + g, 'containment_plain', 'INSERT', 'x', '{}' "
            "FROM generate_series(1, 30000) AS g"
        )
    outcomes = Executor("t").run_batch(queries.Scope(channels=("containment_plain",)), 500)
    assert len(outcomes) == 64 and {o.status for o in outcomes} == {"done"}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE relname = ANY(%s)",
            [sorted(QUEUE)],
        )
        read_whole = {name: n for name, n in cursor.fetchall() if n}
    assert read_whole == {}
