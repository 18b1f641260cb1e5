"""Channels whose events die, and alert hooks, for tests/test_alerts.py.

Listener processes load it with ``EVENTBUS_LISTENER_MODULES=listeners,tests.alerting``;
the test process imports it too, for in-process ``run_events``.
"""

from __future__ import annotations

import psycopg

from eventbus import Channel, Event, GiveUp
from eventbus.integrations.alerts import DeadAlert
from tests.support import database_url

doomed = Channel("alert_doomed")
doomed_too = Channel("alert_doomed_too")

received: list[DeadAlert] = []  # what `record` was given, in this process
states: list[str] = []  # what `record_state` saw committed, in this process


@doomed.on
def _decline(event: Event) -> None:
    raise GiveUp("card declined\nthe processor said no")


@doomed_too.on
def _decline_too(event: Event) -> None:
    raise GiveUp("address unknown")


def record(alert: DeadAlert) -> None:
    """A project's hook: here, it keeps what it is given."""
    received.append(alert)


def fail(alert: DeadAlert) -> None:
    """A hook whose pager is down."""
    raise ConnectionRefusedError("the pager is down")


def record_state(alert: DeadAlert) -> None:
    """What another connection sees of the event when its alert goes out."""
    with psycopg.connect(database_url()) as other:
        row = other.execute("SELECT state FROM eventbus_event WHERE id = %s", [alert.event_id])
        states.append(row.fetchone()[0])
    received.append(alert)
