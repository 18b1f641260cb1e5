"""Which database each channel lives in, and the system checks that the wiring holds.

A channel's events are written by its trigger, into the ``eventbus_event`` table of the
database that holds the channel's table: so a channel lives where its model is migrated.
By default that is ``EVENTBUS["DATABASE_ALIAS"]``; ``Channel(..., database="analytics")``
or ``EVENTBUS["CHANNELS"]["page_viewed"]["database"]`` (the setting wins) names another
Django alias. There, migrate must create the model's table with its triggers and
eventbus's own tables, which the project's routers decide (``allow_migrate``): the checks
below say so before a write is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core import checks
from django.db import connections, router

from eventbus import conf
from eventbus.declaring import registry

SETTING_KEY = "database"


def database_of(queue: str, settings: conf.Settings | None = None) -> str:
    """The alias of the database holding `queue`'s events (its channel's, for a
    subscription: one trigger writes them all)."""
    settings = settings or conf.get()
    name = registry.base_name(queue)
    configured = settings.CHANNELS.get(name, {}).get(SETTING_KEY)
    if configured:
        return str(configured)
    declared = registry.channel(name)
    if declared is not None and declared.database:
        return declared.database
    return settings.DATABASE_ALIAS


def by_database(queues: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """`queues` grouped by the alias of their database, in the order given."""
    settings = conf.get()
    grouped: dict[str, list[str]] = {}
    for queue in queues:
        grouped.setdefault(database_of(queue, settings), []).append(queue)
    return {alias: tuple(names) for alias, names in grouped.items()}


def aliases(queues: Iterable[str] | None = None) -> list[str]:
    """The aliases that hold `queues` (default: every declared channel), the primary
    first; just the primary when there are none."""
    names = registry.queue_names() if queues is None else queues
    primary = conf.get().DATABASE_ALIAS
    found = set(by_database(names)) | {primary}
    return [primary, *sorted(found - {primary})]


def queues_in(alias: str, queues: Sequence[str]) -> tuple[str, ...]:
    """Those of `queues` whose events live in database `alias`."""
    settings = conf.get()
    return tuple(q for q in queues if database_of(q, settings) == alias)


def require_alias(alias: str) -> str:
    """`alias` if DATABASES names it; else ValueError listing the ones it does."""
    if alias not in connections.settings:
        known = ", ".join(connections.settings) or "(none)"
        raise ValueError(f"no database alias {alias!r} in DATABASES (aliases: {known})")
    return alias


@checks.register("eventbus")
def check_channel_databases(**kwargs: Any) -> list[checks.CheckMessage]:
    """eventbus.E040-E042: each channel's database exists, and migrate puts its model's
    table (with the trigger) and eventbus's tables there."""
    from eventbus.declaring.installed import channel_triggers  # late: it imports channel

    found: list[checks.CheckMessage] = []
    settings = conf.get()
    known = set(connections.settings)
    reported: set[str] = set()
    for model, trigger in channel_triggers():
        name = trigger.channel.name
        alias = database_of(name, settings)
        if alias not in known:
            if name not in reported:
                found.append(_unknown_alias(name, alias, known))
                reported.add(name)
            continue
        if not router.allow_migrate_model(alias, model):
            found.append(
                checks.Error(
                    f"channel {name} lives in database {alias!r}, but the database routers "
                    f"do not migrate {model._meta.label} there: its table and trigger would "
                    "not exist where listeners claim its events.",
                    hint=f"Let allow_migrate() return True for {model._meta.app_label} on "
                    f"{alias!r}, or declare the channel in the database its model is "
                    "migrated to (Channel(..., database=...) or "
                    f'EVENTBUS["CHANNELS"][{name!r}]["database"]).',
                    obj=model,
                    id="eventbus.E041",
                )
            )
    for name in registry.channel_names():  # channels without a trigger (published from code)
        alias = database_of(name, settings)
        if alias not in known and name not in reported:
            found.append(_unknown_alias(name, alias, known))
            reported.add(name)
    for alias in sorted({database_of(n, settings) for n in registry.channel_names()} & known):
        if not router.allow_migrate(alias, "eventbus"):
            found.append(
                checks.Error(
                    f"channels live in database {alias!r}, but the database routers do not "
                    "migrate eventbus there: their triggers would write into a table that "
                    "does not exist.",
                    hint=f"Let allow_migrate() return True for app 'eventbus' on {alias!r}, "
                    f"then run `manage.py migrate --database {alias}`.",
                    id="eventbus.E042",
                )
            )
    return found


def _unknown_alias(name: str, alias: str, known: set[str]) -> checks.CheckMessage:
    return checks.Error(
        f"channel {name} names database {alias!r}, which is not in DATABASES.",
        hint=f"Add {alias!r} to DATABASES, or name one of: {', '.join(sorted(known))}.",
        id="eventbus.E040",
    )
