"""Alerts on death: a newly dead event tells the admins, or a hook, once its death has
committed; at most once per channel per interval across all workers; never at the cost
of the event or the worker."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.test import override_settings

from eventbus.models import DeadAlertRecord, EventRecord
from eventbus.testing import run_events
from tests import alerting
from tests.alerting import doomed, doomed_too
from tests.support import Listener, SMTPServer, wait_until

OPS = "ops@example.com"
BASE = "https://ops.example.com"


@pytest.fixture(autouse=True)
def _forget_alerts() -> Iterator[None]:
    alerting.received.clear()
    alerting.states.clear()
    yield


def alerting_to(hook: str, **eventbus: Any) -> override_settings:
    return override_settings(
        EVENTBUS={"DEAD_ALERT": hook, "ADMIN_BASE_URL": BASE, **eventbus},
        ADMINS=[("Ops", OPS)],
    )


def smtp_to(server: SMTPServer) -> override_settings:
    return override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=server.port,
    )


@pytest.mark.django_db
def test_a_dead_event_emails_the_admins_its_id_channel_error_and_admin_page(
    smtp: SMTPServer,
) -> None:
    event_id = doomed.publish({"order": 7})
    with alerting_to("mail_admins"), smtp_to(smtp):
        [outcome] = run_events(["alert_doomed"])
    assert outcome.status == "dead"

    [message] = smtp.mailbox.snapshot()
    assert message["To"] == OPS
    assert message["Subject"].endswith(
        f"event {event_id} alert_doomed is dead: GiveUp: card declined"
    ), "the error's first line only"
    body = message.get_payload(decode=True).decode()
    assert f"Event {event_id} of channel alert_doomed is dead after attempt 1." in body
    assert "Error: GiveUp: card declined" in body
    assert f"Admin: {BASE}/admin/eventbus/eventrecord/{event_id}/change/" in body


@pytest.mark.django_db
def test_a_projects_hook_gets_the_alert_and_each_channel_is_limited_on_its_own() -> None:
    first = [doomed.publish({}) for _ in range(3)]
    with alerting_to("tests.alerting.record"):
        run_events(["alert_doomed"])  # three deaths in one batch: one alert
        [doomed.publish({}) for _ in range(2)]
        run_events(["alert_doomed"])  # within the interval: none
        other = doomed_too.publish({})
        run_events(["alert_doomed_too"])  # another channel: its own alert

    assert [(a.event_id, a.channel, a.also_dead) for a in alerting.received] == [
        (first[0], "alert_doomed", 2),
        (other, "alert_doomed_too", 0),
    ]
    alert = alerting.received[0]
    assert (alert.attempt, alert.error) == (1, "GiveUp: card declined")
    assert alert.details.startswith("GiveUp: card declined\nthe processor said no")
    assert alert.admin_url == f"{BASE}/admin/eventbus/eventrecord/{first[0]}/change/"


@pytest.mark.django_db
def test_the_next_alert_after_the_interval_counts_the_deaths_it_did_not_announce() -> None:
    with alerting_to("tests.alerting.record", DEAD_ALERT_INTERVAL=600):
        doomed.publish({})
        run_events(["alert_doomed"])
        [doomed.publish({}) for _ in range(2)]
        run_events(["alert_doomed"])
        assert len(alerting.received) == 1
        # ten minutes pass (as the limiter sees them)
        DeadAlertRecord.objects.update(sent_at=F("sent_at") - timedelta(seconds=601))
        latest = doomed.publish({})
        run_events(["alert_doomed"])

    assert [(a.event_id, a.also_dead) for a in alerting.received][1:] == [(latest, 2)]


@pytest.mark.django_db(transaction=True)
def test_an_alert_goes_out_only_once_the_death_has_committed() -> None:
    doomed.publish({})
    with alerting_to("tests.alerting.record_state"):
        run_events(["alert_doomed"])  # committing: no test transaction around it
    assert alerting.states == ["dead"], "another connection already sees the event dead"


@pytest.mark.django_db
@pytest.mark.parametrize("failure", ["a hook that raises", "an SMTP server that is down"])
def test_a_failing_alert_is_logged_and_changes_nothing(
    failure: str, smtp: SMTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    if failure == "an SMTP server that is down":
        smtp.stop()
        settings = [alerting_to("mail_admins"), smtp_to(smtp)]
    else:
        settings = [alerting_to("tests.alerting.fail")]
    dead = doomed.publish({})
    other = doomed_too.publish({})
    with caplog.at_level(logging.ERROR, logger="eventbus.alerts"):
        for override in settings:
            override.enable()
        try:
            outcomes = run_events(["alert_doomed", "alert_doomed_too"])
        finally:
            for override in reversed(settings):
                override.disable()

    assert [(o.event_id, o.status) for o in outcomes] == [(dead, "dead"), (other, "dead")]
    assert dict(EventRecord.objects.values_list("id", "state")) == {dead: "dead", other: "dead"}
    failed = [r.getMessage() for r in caplog.records if r.name == "eventbus.alerts"]
    assert len(failed) == 2, "each channel's alert failed on its own"
    assert failed[0].startswith(f"event {dead} alert_doomed: the alert about its death failed")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_limit_holds_across_listener_processes(
    smtp: SMTPServer, start_listener: Callable[..., Listener]
) -> None:
    env = {"EVENTBUS_LISTENER_MODULES": "listeners,tests.alerting", "DJANGO_ADMINS": OPS}

    def run_listener_until_dead(count: int) -> None:
        listener = start_listener("--processes", "1", smtp=smtp, env_extra=env)
        wait_until(
            lambda: (
                EventRecord.objects.filter(channel="alert_doomed", state="dead").count() == count
            ),
            what=f"{count} dead events; log:\n{listener.log()}",
        )
        assert listener.terminate() == 0, listener.log()  # its batch, alert included, ends

    [doomed.publish({}) for _ in range(3)]
    run_listener_until_dead(3)
    assert len(smtp.mailbox.snapshot()) == 1

    [doomed.publish({}) for _ in range(2)]
    run_listener_until_dead(5)  # another process, within the interval
    assert len(smtp.mailbox.snapshot()) == 1, "no second alert from another process"
    assert DeadAlertRecord.objects.get(channel="alert_doomed").suppressed == 2
