"""Argument parsing shared by the eventbus management commands."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta

from django.core.management.base import CommandError, CommandParser
from django.db import connections
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from eventbus import conf, sql
from eventbus.declaring import placement, registry

# A channel, or one subscription's queue of it (`comment_created:email_author`).
STORED_NAME = re.compile(r"[a-z][a-z0-9_]*(:[a-z][a-z0-9_]*)?")


def channels(names: list[str] | None) -> tuple[str, ...] | None:
    """Validate channel names against the declared channels; None means all.

    A channel with subscriptions stands for all of them; ``channel:subscription`` for one.
    Returns queue names."""
    if not names:
        return None
    unknown = sorted(name for name in set(names) if not registry.is_declared(name))
    if unknown:
        known = sorted({*registry.channel_names(), *registry.queue_names()})
        raise CommandError(
            f"unknown channel(s): {', '.join(unknown)}. Declared: {', '.join(known)}"
        )
    return registry.expand(names)


def stored_channels(names: list[str] | None, alias: str) -> tuple[str, ...] | None:
    """Channel names that are declared or have events in the table; None means all.

    Returns queue names. Operators name the channels of the rows they see: a channel
    removed from the code keeps its events (dead ones, or pending ones nobody will
    handle) until they are retried or purged, so such a name is as good as a declared one.
    """
    if not names:
        return None
    malformed = sorted(n for n in set(names) if not STORED_NAME.fullmatch(n))
    if malformed:
        raise CommandError(
            f"not a channel name: {', '.join(malformed)} (expected {STORED_NAME.pattern})"
        )
    stored: dict[str, list[str]] = {}
    undeclared = sorted(name for name in set(names) if not registry.is_declared(name))
    if undeclared:  # one scan of the table, for names of removed channels only
        with connections[alias].cursor() as cursor:
            cursor.execute(*sql.stored_channels(undeclared))
            for name, queue in cursor.fetchall():
                stored.setdefault(name, []).append(queue)
            unknown = sorted(set(undeclared) - set(stored))
            if unknown:
                cursor.execute(sql.ALL_STORED_CHANNELS)
                existing = set(registry.channel_names()) | {row[0] for row in cursor}
                raise CommandError(
                    f"unknown channel(s): {', '.join(unknown)}: neither declared nor in the "
                    f"event table. Channels: {', '.join(sorted(existing)) or '(none)'}"
                )
    # A channel stands for all its queues: its subscriptions (declared, or stored for a
    # removed channel), and its own name (events written before it had subscriptions).
    queues: list[str] = []
    for name in names:
        queues += stored.get(name) or [*registry.expand([name]), name]
    return tuple(dict.fromkeys(queues))


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


def add_database(parser: CommandParser, *, inherited: bool = False) -> None:
    """`--database ALIAS`: the database whose events a command reads or changes.
    `inherited`: on a subcommand, after its name (`events retry --database other`); the
    parent's value stands when the subcommand's is not given."""
    parser.add_argument(
        "--database",
        metavar="ALIAS",
        default=argparse.SUPPRESS if inherited else None,
        help='the Django database alias (default EVENTBUS["DATABASE_ALIAS"]); channels in '
        "another database keep their events there",
    )


def database(value: str | None) -> str:
    """The alias `--database` named, checked against DATABASES; default the primary."""
    alias = value or conf.get().DATABASE_ALIAS
    try:
        return placement.require_alias(alias)
    except ValueError as exc:
        raise CommandError(f"--database: {exc}") from None
