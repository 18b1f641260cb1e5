"""A channel with two subscriptions, one of them flaky, for tests/test_subscriptions.py.

Listener processes load it with ``EVENTBUS_LISTENER_MODULES=listeners,tests.fanout``.
Each handler that succeeds leaves a row ``(event_id, subscription, attempt)`` in the
plain table ``fanout_effect`` (no unique constraint, so a repeated database effect shows
as a second row); it commits only with the event's claim transaction.
"""

from __future__ import annotations

from django.db import connection

from eventbus import Channel, Event, RetryPolicy

EFFECT_TABLE = "fanout_effect"
CREATE_EFFECT_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {EFFECT_TABLE} "
    "(event_id bigint NOT NULL, subscription text NOT NULL, attempt int NOT NULL)"
)
FLAKY_ATTEMPTS = 3  # the flaky subscription succeeds on its third attempt

fanout = Channel(
    "fanout_demo",
    operations=(),
    key="n",
    subscriptions=["tally", "flaky"],
    retry=RetryPolicy(max_attempts=5, base_delay=0.05, jitter=False),
)


def _effect(event: Event) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EFFECT_TABLE} VALUES (%s, %s, %s)",
            [event.id, event.subscription, event.attempt],
        )


@fanout.on("tally")
def tally(event: Event) -> None:
    _effect(event)


@fanout.on("flaky")
def flaky(event: Event) -> None:
    _effect(event)  # rolled back with its savepoint when it raises below
    if event.attempt < FLAKY_ATTEMPTS:
        raise ConnectionError(f"the search index is down (attempt {event.attempt})")
