"""Argument parsing shared by the eventbus management commands."""

from __future__ import annotations

from datetime import datetime

from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from eventbus import registry


def channels(names: list[str] | None) -> tuple[str, ...] | None:
    """Validate channel names against the declared channels; None means all."""
    if not names:
        return None
    known = set(registry.channel_names())
    unknown = sorted(set(names) - known)
    if unknown:
        raise CommandError(
            f"unknown channel(s): {', '.join(unknown)}. Declared: {', '.join(sorted(known))}"
        )
    return tuple(dict.fromkeys(names))


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
