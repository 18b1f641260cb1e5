"""Alerts on death: a newly dead event tells a person, without flooding them.

``EVENTBUS["DEAD_ALERT"] = "mail_admins"`` sends Django's ``mail_admins``; a dotted path
names a hook of the project's, called with a `DeadAlert`. Either way the alert names the
event, its channel, the first line of its error and its admin page.

- **After the commit.** The executor calls `DeadAlerts.after_commit` with a batch's
  outcomes once its claim transaction has committed, so an alert is never sent for a
  death that was rolled back, and its link shows the event dead.
- **Rate-limited per channel, across every worker.** One statement on the event
  database (``eventbus_dead_alert``, one row per channel) records the deaths and decides:
  at most one alert per channel per ``DEAD_ALERT_INTERVAL`` seconds (600), on any host;
  the next one counts the deaths it covers that had no alert of their own.
- **Never the event's or the worker's problem.** A failing alert (SMTP down, a hook that
  raises) is logged as an error; the event stays as it was recorded and the worker goes
  on. An alert is sent at most once: a worker that dies after the rate limit's statement
  and before the send loses it.
- **Quick, in the worker.** The alert runs in the worker between two batches, so keep a
  hook short (queue it, or post it with a timeout): one that blocks longer than
  ``HANG_GRACE`` gets its worker restarted as hung (its events are already committed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import mail_admins
from django.db import connections, transaction
from django.urls import NoReverseMatch, reverse
from django.utils.module_loading import import_string

from eventbus import conf, sql
from eventbus.event import DEAD
from eventbus.running.errortext import first_line

if TYPE_CHECKING:
    from eventbus.conf import Settings
    from eventbus.running.executor import Outcome

log = logging.getLogger("eventbus.alerts")
MAIL_ADMINS = "mail_admins"
SUBJECT_CHARS = 150


@dataclass(frozen=True, slots=True)
class DeadAlert:
    """What a hook receives about a newly dead event."""

    event_id: int
    channel: str  # the name it is stored under: channel, or channel:subscription
    attempt: int
    error: str  # the error's first line
    details: str  # the whole stored error text, with its traceback summary
    admin_url: str | None  # the event's admin page; None when the admin has no such page
    also_dead: int  # deaths of this channel it covers besides its own, without an alert

    @property
    def subject(self) -> str:
        subject = f"event {self.event_id} {self.channel} is dead: {self.error}"
        return subject if len(subject) <= SUBJECT_CHARS else subject[: SUBJECT_CHARS - 1] + "…"

    @property
    def body(self) -> str:
        lines = [
            f"Event {self.event_id} of channel {self.channel} is dead after attempt "
            f"{self.attempt}.",
            "",
            f"Error: {self.error}",
        ]
        if self.admin_url:
            lines += ["", f"Admin: {self.admin_url}"]
        if self.also_dead:
            lines += [
                "",
                f"{self.also_dead} more event(s) of {self.channel} died since the last alert "
                "without one of their own.",
            ]
        return "\n".join([*lines, "", self.details.rstrip(), ""])


def send_mail_admins(alert: DeadAlert) -> None:
    """``DEAD_ALERT = "mail_admins"``: one email to ``ADMINS``."""
    mail_admins(alert.subject, alert.body, fail_silently=False)


def dead_alerts(settings: Settings, alias: str) -> DeadAlerts | None:
    """The executor's alerts, or None when ``DEAD_ALERT`` is unset."""
    if not settings.DEAD_ALERT:
        return None
    return DeadAlerts(
        _hook(settings.DEAD_ALERT), alias, settings.DEAD_ALERT_INTERVAL, settings.ADMIN_BASE_URL
    )


def _hook(name: str) -> Callable[[DeadAlert], object]:
    if name == MAIL_ADMINS:
        if not django_settings.ADMINS:
            log.warning('DEAD_ALERT is "mail_admins" but ADMINS is empty: no alert will be sent')
        return send_mail_admins
    try:
        return import_string(name)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f'EVENTBUS["DEAD_ALERT"]: {name!r} is neither "mail_admins" nor an importable '
            f"hook: {exc}"
        ) from exc


class DeadAlerts:
    """Alerts for one executor's newly dead events."""

    def __init__(
        self, hook: Callable[[DeadAlert], object], alias: str, interval: float, base_url: str
    ) -> None:
        self.hook = hook
        self.alias = alias
        self.interval = interval
        self.base_url = base_url.rstrip("/")

    def after_commit(self, outcomes: Iterable[Outcome]) -> None:
        """Alert about the batch's newly dead events, per channel as the limit allows."""
        dead: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            if outcome.status == DEAD:
                dead.setdefault(outcome.channel, []).append(outcome)
        for channel, died in dead.items():
            first = died[0]
            try:
                also_dead = self._admit(channel, len(died))
                if also_dead is not None:
                    self.hook(self._alert(first, also_dead))
            except Exception as exc:  # the event is dead whatever the alert does
                log.error(
                    "event %d %s: the alert about its death failed: %s",
                    first.event_id,
                    channel,
                    first_line(f"{type(exc).__name__}: {exc}"),
                    extra={"event_id": first.event_id, "channel": channel},
                    exc_info=True,
                )

    def _admit(self, channel: str, deaths: int) -> int | None:
        """Record the deaths; None if no alert is due, else the deaths it covers besides one."""
        query = sql.ADMIT_DEAD_ALERT
        params = {"channel": channel, "n": deaths, "interval": self.interval}
        with transaction.atomic(using=self.alias), connections[self.alias].cursor() as cursor:
            cursor.execute(query, params)
            (reported,) = cursor.fetchone()
        return None if reported < 0 else int(reported)

    def _alert(self, outcome: Outcome, also_dead: int) -> DeadAlert:
        error = outcome.error or ""
        return DeadAlert(
            event_id=outcome.event_id,
            channel=outcome.channel,
            attempt=outcome.attempt,
            error=first_line(error),
            details=error,
            admin_url=self._admin_url(outcome.event_id),
            also_dead=also_dead,
        )

    def _admin_url(self, event_id: int) -> str | None:
        """The event's admin page as a link a mail client opens: None without
        ``ADMIN_BASE_URL`` (a worker has no request to learn the site's address from;
        check ``eventbus.W030`` says so)."""
        if not self.base_url:
            return None
        try:
            path = reverse("admin:eventbus_eventrecord_change", args=[event_id])
        except NoReverseMatch:
            return None
        return f"{self.base_url.rstrip('/')}{path}"


@checks.register("eventbus")
def check_alert_links(**kwargs: Any) -> list[checks.CheckMessage]:
    """eventbus.W030: alerts on death are on, but they cannot link to the event."""
    settings = conf.get()
    if not settings.DEAD_ALERT or settings.ADMIN_BASE_URL:
        return []
    return [
        checks.Warning(
            "DEAD_ALERT is set but ADMIN_BASE_URL is not: alerts will carry no link to "
            "the dead event's admin page",
            hint='Set EVENTBUS["ADMIN_BASE_URL"] (or EVENTBUS_ADMIN_BASE_URL) to the '
            "site's address, such as https://blog.example.",
            id="eventbus.W030",
        )
    ]
