"""Argument parsing shared by the eventbus management commands."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from eventbus.declaring import registry


def channels(names: list[str] | None) -> tuple[str, ...] | None:
    """Validate channel names against the declared channels; None means all.

    A channel with subscriptions stands for all of them; ``channel:subscription`` for one.
    Returns queue names."""
    if not names:
        return None
    unknown = sorted(name for name in set(names) if not registry.is_declared(name))
    if unknown:
        known = registry.channel_names() + [
            q for q in registry.queue_names() if q not in registry.channel_names()
        ]
        raise CommandError(
            f"unknown channel(s): {', '.join(unknown)}. Declared: {', '.join(sorted(known))}"
        )
    return registry.expand(names)


def timestamp(value: str | None) -> datetime | None:
    """Parse an ISO date or date-time; naive values are in the current time zone."""
    if value is None:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"--since: not an ISO date or date-time: {value!r}")
        parsed = datetime(day.year, day.month, day.day)
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(value: str) -> timedelta:
    """Parse `30d`, `12h`, `90m`, `45s` or `2w`."""
    number, unit = value[:-1], value[-1:].lower()
    if unit not in _UNITS or not number.isdigit():
        raise CommandError(f"not a duration like 30d, 12h, 90m or 45s: {value!r}")
    return timedelta(seconds=int(number) * _UNITS[unit])


def states(values: list[str] | None, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    if not values:
        return None
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise CommandError(f"unknown state(s): {', '.join(unknown)}; one of: {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))
