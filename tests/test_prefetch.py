"""`eventbus.prefetch`: a per-event handler's reads, batched: one loader call per claim."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import transaction

from eventbus.running.executor import Executor
from tests import poison
from tests.test_containment import (
    db_effects,
    effect_table,  # noqa: F401 - the effect table, made and dropped around each test
    notes,
    publish,
    scope,
)

pytestmark = pytest.mark.django_db(transaction=True)
CHANNEL = "containment_prefetch"


@pytest.fixture(autouse=True)
def calls() -> list[list[int]]:
    poison.loader_calls.clear()
    return poison.loader_calls


def test_the_loader_runs_once_per_claimed_batch_with_all_its_events(
    calls: list[list[int]],
) -> None:
    """10 events in two claims of 5: two loader calls, each with its claim's events, and
    every handler sees its own event in the result; one that fails after reading does
    not disturb the others."""
    with transaction.atomic():
        ids = [publish(CHANNEL, fail=(n == 3)) for n in range(10)]
    executor = Executor("t")
    outcomes = executor.run_batch(scope(CHANNEL), 5) + executor.run_batch(scope(CHANNEL), 5)
    assert calls == [ids[:5], ids[5:]]
    assert {o.event_id: o.status for o in outcomes} == {
        pk: "failed" if pk == ids[3] else "done" for pk in ids
    }
    assert db_effects() == Counter(pk for pk in ids if pk != ids[3])
    assert set(notes().values()) == {"in its batch"}


def test_outside_a_worker_the_loader_gets_the_one_event(calls: list[list[int]]) -> None:
    """A test or a shell calling the handler directly: the loader reads just that event."""
    from django.utils import timezone

    from eventbus import Event

    event = Event(42, CHANNEL, "PUBLISH", "", None, None, {}, timezone.now(), 1)
    assert poison.batch_ids(event) == {42}
    assert calls == [[42]]
