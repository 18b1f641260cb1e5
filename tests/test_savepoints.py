"""A savepoint per event, opened at the handler's first query (issue 12).

A handler that sends no query has nothing to roll back and costs no savepoint; one that
fails loses its effects and its on_commit callbacks exactly as inside Django's own
``atomic``, whether it failed before, after or without a query.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from eventbus.models import EventRecord
from eventbus.running.executor import Executor
from tests.test_containment import (
    db_effects,
    effect_table,  # noqa: F401 - the effect table, made and dropped around each test
    file_effects,
    notes,
    publish,
    scope,
    states,
    transaction_sizes,
)

pytestmark = pytest.mark.django_db(transaction=True)
LAZY = "containment_lazy"


def drain(limit: int = 500) -> list:
    outcomes = []
    with override_settings(EVENTBUS={**settings.EVENTBUS, "BATCH_TIME_BUDGET": 600}):
        executor = Executor("t")
        while batch := executor.run_batch(scope(LAZY), limit):
            outcomes += batch
    return outcomes


def test_handlers_that_send_no_query_open_no_savepoint_and_share_one_transaction() -> None:
    """150 events whose handler queries nothing: one claim transaction handles them all,
    where a savepoint each would have cut it at 64 (the subtransaction cache)."""
    EventRecord.objects.bulk_create(
        EventRecord(channel=LAZY, operation="INSERT", table_name="x", new={"do": "nothing"})
        for _ in range(150)
    )
    ids = sorted(EventRecord.objects.values_list("pk", flat=True))
    drain()
    assert set(states(ids).values()) == {"done"}
    assert transaction_sizes(ids) == [150]


def test_handlers_that_query_still_get_a_savepoint_each() -> None:
    """The same 150 events writing a row each: at most 64 per transaction, each effect
    exactly once."""
    EventRecord.objects.bulk_create(
        EventRecord(channel=LAZY, operation="INSERT", table_name="x", new={}) for _ in range(150)
    )
    ids = sorted(EventRecord.objects.values_list("pk", flat=True))
    drain()
    assert set(states(ids).values()) == {"done"}
    assert max(transaction_sizes(ids)) <= 64
    assert db_effects() == Counter(ids)


@pytest.mark.parametrize("do", ["raise", "effect_then_raise", "inner_atomic_then_raise"])
def test_a_failed_attempt_loses_its_effects_and_on_commit_callbacks(
    do: str, tmp_path: Path
) -> None:
    """Failing before any query, after its effect, or after an inner atomic block: the
    event fails alone, with nothing of it committed and none of its on_commit callbacks
    run, while its neighbours in the batch commit theirs."""
    commits = tmp_path / "commits"
    before = publish(LAZY, do="nothing", commits=str(commits))
    failing = publish(LAZY, do=do, commits=str(commits))
    after = publish(LAZY, commits=str(commits))
    outcomes = {o.event_id: o.status for o in drain()}
    assert outcomes == {before: "done", failing: "failed", after: "done"}
    assert db_effects() == Counter([after]), notes()
    assert file_effects(commits) == Counter([before, after]), "only the done events' callbacks"
    assert "RuntimeError: failed" in EventRecord.objects.get(pk=failing).last_error


def test_a_handler_query_sent_with_its_savepoint_gets_its_own_result() -> None:
    """The savepoint (and the last event's release) travel in one string with the
    handler's first query; the handler still reads that query's rows and row count."""
    ids = [publish(LAZY, do="select") for _ in range(3)]
    assert {o.status for o in drain()} == {"done"}
    assert notes() == {pk: f"row of {pk}% 0" for pk in ids}
