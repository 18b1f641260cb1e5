"""The claim stays an index scan when the table is mostly history (1,000,000 done events)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from psycopg import sql

from eventbus import sql as queries

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


def scans(plan: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [
        (n["Node Type"], n.get("Index Name"))
        for n in plan
        if n.get("Relation Name") == "eventbus_event" or "Index Name" in n
    ]


def test_the_claim_uses_the_runnable_index_not_a_table_scan(history: None) -> None:
    query, params = queries.claim(queries.Scope(ordered_channels=("post_edited",)), 500)
    found = scans(explain(query, params))
    assert ("Seq Scan", None) not in found, found
    assert any(index == "eventbus_event_runnable" for _, index in found), found
    # Every index of the event table read is a partial index of runnable events (the
    # planner picks which for the ordered-key check); never the primary key, which would
    # walk the done history. The crash ledger is looked up by its own primary key.
    used = {index for _, index in found if index}
    allowed = {"eventbus_event_runnable", "eventbus_event_key_runnable", "eventbus_inflight_pkey"}
    assert used <= allowed, found


def test_the_backlog_query_reads_only_runnable_events(history: None) -> None:
    found = scans(explain(queries.BACKLOG, None))
    assert ("Seq Scan", None) not in found, found
    assert any(index == "eventbus_event_runnable" for _, index in found), found
