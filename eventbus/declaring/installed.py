"""Does the database hold the triggers the declared channels need? (the database check)

A channel whose trigger is missing, outdated or disabled loses every write to its table
without a word, and a trigger left over from a channel no longer declared (or installed
twice, once by ``pgtrigger install`` and once by a migration) writes events nobody asked
for. This compares the channel triggers of the code with pgtrigger's installed state
(each trigger's comment holds the hash of its SQL) and names the command that fixes each
difference. ``manage.py check`` prints it; ``listen`` refuses to start on an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pgtrigger
from django.core import checks
from django.db import DatabaseError, connections, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState
from pgtrigger import core
from pgtrigger import registry as pgtrigger_registry

from eventbus import sql
from eventbus.declaring import placement
from eventbus.declaring.channel import ChannelTrigger

PREFIX = "pgtrigger_eb_"
PROXY_ROUTE = (
    "A trigger on a model without migrations of its own (an auto-created many-to-many "
    "table, pgtrigger.register on another app's model) is never installed by migrate: "
    "declare it on a proxy model in your app (README, 'Attach a channel to any table'), "
    "then run `manage.py makemigrations` and `manage.py migrate`."
)


@dataclass(frozen=True)
class Difference:
    """One channel trigger (or function) where the database differs from the code."""

    id: str  # the check's id: eventbus.E020 …
    message: str
    hint: str
    model: type[models.Model] | None = None

    @property
    def is_error(self) -> bool:
        return ".E" in self.id

    def as_check(self) -> checks.CheckMessage:
        level = checks.Error if self.is_error else checks.Warning
        return level(self.message, hint=self.hint, obj=self.model, id=self.id)

    def __str__(self) -> str:
        where = f"{self.model._meta.label}: " if self.model else ""
        return f"{where}({self.id}) {self.message} HINT: {self.hint}"


class _Migrations:
    """What the project's migrations declare: applied so far, and once all have run."""

    def __init__(self, alias: str) -> None:
        self.loader = MigrationLoader(connections[alias], ignore_no_migrations=True)

    @cached_property
    def applied(self) -> ProjectState:
        nodes = [key for key in self.loader.applied_migrations if key in self.loader.graph.nodes]
        return self.loader.project_state(nodes) if nodes else ProjectState()

    @cached_property
    def written(self) -> ProjectState:
        return self.loader.project_state()

    @staticmethod
    def declares(state: ProjectState, model: type[models.Model], compiled: Any) -> bool:
        model_state = state.models.get((model._meta.app_label, model._meta.model_name))
        return model_state is not None and compiled in model_state.options.get("triggers", [])

    @staticmethod
    def pgids(state: ProjectState) -> set[str]:
        return {
            trigger.sql.pgid
            for model_state in state.models.values()
            for trigger in model_state.options.get("triggers", [])
            if hasattr(trigger, "sql")
        }


def channel_triggers() -> list[tuple[type[models.Model], ChannelTrigger]]:
    """Every channel trigger the code declares: in Meta.triggers or pgtrigger.register."""
    return [
        (model, trigger)
        for model, trigger in pgtrigger_registry.registered()
        if isinstance(trigger, ChannelTrigger)
    ]


def compare(alias: str) -> list[Difference]:
    """The differences between the declared channel triggers and database `alias`."""
    migrations = _Migrations(alias)
    found = [
        *_declared(alias, migrations),
        *_left_over(alias, migrations),
        *_orphan_functions(alias),
    ]
    return found


def _declared(alias: str, migrations: _Migrations) -> Iterable[Difference]:
    for model, trigger in channel_triggers():
        if placement.database_of(trigger.channel.name) != alias:
            continue  # another database's channel: compared there
        status, enabled = trigger.get_installation_status(model, database=alias)
        what = (
            f"The {trigger.event_operation} trigger of channel {trigger.channel.name} on "
            f"table {model._meta.db_table}"
        )
        uri = trigger.get_uri(model)
        if status in (core.UNINSTALLED, core.OUTDATED):
            code, state = _NOT_RUNNING[status]
            hint = _remedy(migrations, model, trigger, uri)
            yield Difference(code, f"{what} {state}", hint, model)
        elif status == core.INSTALLED and not enabled:
            yield Difference(
                "eventbus.E022",
                f"{what} is disabled: writes to that table make no events.",
                f"Run `manage.py pgtrigger enable {uri}`.",
                model,
            )


# What a declared trigger that does not run as declared is reported as: (id, state).
_NOT_RUNNING = {
    core.UNINSTALLED: (
        "eventbus.E020",
        "is not installed: writes to that table make no events.",
    ),
    core.OUTDATED: (
        "eventbus.E021",
        "is outdated: the database runs an older body than the code declares.",
    ),
}


def _remedy(migrations: _Migrations, model: type[models.Model], trigger: Any, uri: str) -> str:
    compiled = trigger.compile(model)
    install_now = f"`manage.py pgtrigger install {uri}` installs it now."
    if migrations.declares(migrations.applied, model, compiled):
        return (
            "Its migration has run, yet the database differs (changed by hand?): "
            f"`manage.py pgtrigger install {uri}` reinstalls it."
        )
    if migrations.declares(migrations.written, model, compiled):
        return "Run `manage.py migrate`: a migration not yet applied installs it."
    in_meta = trigger in getattr(model._meta, "triggers", [])
    has_migrations = model._meta.app_label in migrations.loader.migrated_apps
    if model._meta.auto_created or not (in_meta and has_migrations):
        return f"{PROXY_ROUTE} Or: {install_now}"
    return "Run `manage.py makemigrations`, then `manage.py migrate`."


def _left_over(alias: str, migrations: _Migrations) -> Iterable[Difference]:
    removed_by_migration = migrations.pgids(migrations.applied) - migrations.pgids(
        migrations.written
    )
    for table, pgid, _enabled, _db in pgtrigger.prunable(database=alias):
        if not pgid.startswith(PREFIX):
            continue
        hint = (
            "Run `manage.py migrate`: a migration not yet applied removes it."
            if pgid in removed_by_migration
            else "Run `manage.py pgtrigger prune` to drop triggers no model declares."
        )
        yield Difference(
            "eventbus.W020",
            f"Trigger {pgid} on table {table} belongs to no declared channel trigger "
            f"(channel {_channel_of(pgid)} removed, or installed twice): each write to "
            "that table makes events nobody declared.",
            hint,
        )


def _orphan_functions(alias: str) -> Iterable[Difference]:
    """Functions no trigger uses, except those of declared triggers (reported as missing)."""
    declared = {trigger.get_pgid(model) for model, trigger in channel_triggers()}
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.ORPHAN_TRIGGER_FUNCTIONS)
        names = [row[0] for row in cursor.fetchall() if row[0] not in declared]
    for name in names:
        yield Difference(
            "eventbus.W021",
            f"Function {name}() of a removed channel trigger is left over (no trigger uses it).",
            f"Drop it: `manage.py dbshell` then `DROP FUNCTION {name}();`",
        )


def _channel_of(pgid: str) -> str:
    """The channel in a pgid: pgtrigger_eb_<channel>_<ins|upd|del>_<5 hex of the model>."""
    return pgid[len(PREFIX) : -len("_ins_12345")]


def require_installed(alias: str) -> list[Difference]:
    """Raise ValueError naming each missing, outdated or disabled trigger; return warnings.

    An unreachable database is no reason to refuse: workers wait for it with backoff.
    """
    try:
        differences = compare(alias)
    except DatabaseError:
        return []
    errors = [d for d in differences if d.is_error]
    if errors:
        lines = "\n".join(f"  {d}" for d in errors)
        raise ValueError(
            f"the database lacks triggers that declared channels need, so their writes "
            f"would make no events:\n{lines}"
        )
    return differences


_comparing: ContextVar[bool] = ContextVar("eventbus_compare_triggers", default=False)


@contextmanager
def comparing() -> Iterator[None]:
    """Compare the database's triggers in the system checks run inside (`manage.py check`,
    which eventbus extends: eventbus/management/commands/check.py). Every other command
    (migrate, runserver, pgtrigger install, the very commands that fix a difference) runs
    the system checks too, and must not be stopped by them nor pay for the round trips."""
    token = _comparing.set(True)
    try:
        yield
    finally:
        _comparing.reset(token)


@checks.register("eventbus")
def check_installed(
    app_configs: Any = None, databases: list[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """eventbus.E020-E022, W020-W022: each database holds the triggers its channels need
    (`check --database ALIAS`: that one; default: every database that holds channels)."""
    if not _comparing.get():
        return []
    found: list[checks.CheckMessage] = []
    known = set(connections.settings)  # an alias not in DATABASES is eventbus.E040's
    for alias in databases or [a for a in placement.aliases() if a in known]:
        try:
            found += [d.as_check() for d in compare(alias)]
        except DatabaseError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            found.append(
                checks.Warning(
                    f"Could not compare the channel triggers with database {alias!r}: {first_line}",
                    hint="Run `manage.py check` where the database is reachable.",
                    id="eventbus.W022",
                )
            )
    return found
