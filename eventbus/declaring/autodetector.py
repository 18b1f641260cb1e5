"""makemigrations: a migration that adds a channel trigger depends on eventbus's tables.

A channel trigger inserts into the event table. Without a dependency, a fresh ``migrate``
orders apps alphabetically where nothing links them, so an app named ``blog`` or
``catalog`` created its triggers (and ran its data migrations) before
``eventbus_event`` existed: ``relation "eventbus_event" does not exist``. The trigger's
body is rendered from this release's schema, so the dependency is on eventbus's newest
migration at the time the migration is written, resolved by Django's autodetector like
any cross-app foreign key. Migrations already written are never changed, so applied
histories stay consistent.
"""

from __future__ import annotations

from typing import Any

import django
from django.core.management.commands import makemigrations, migrate
from pgtrigger.migrations import OPERATION_DEPENDENCY_CREATE, AddTrigger, OperationDependency

from eventbus.declaring.triggers import CompiledChannelTrigger

APP_LABEL = "eventbus"
EVENT_MODEL = "eventrecord"


class ChannelTriggerDependencies:
    """Autodetector mixin: every added channel trigger depends on the event table's app."""

    def add_operation(
        self,
        app_label: str,
        operation: Any,
        dependencies: Any = None,
        beginning: bool = False,
    ) -> None:
        if (
            app_label != APP_LABEL
            and isinstance(operation, AddTrigger)
            and isinstance(operation.trigger, CompiledChannelTrigger)
        ):
            event_table = OperationDependency(
                APP_LABEL, EVENT_MODEL, None, OPERATION_DEPENDENCY_CREATE
            )
            dependencies = [*(dependencies or []), event_table]
        super().add_operation(  # type: ignore[misc]
            app_label, operation, dependencies=dependencies, beginning=beginning
        )


def install() -> None:
    """Wrap the autodetector that makemigrations and migrate use, one class for both as
    Django's check commands.E001 requires (before or after pgtrigger wraps it: each wraps
    whatever it finds, so both mixins end up in the class)."""
    current = makemigrations.MigrationAutodetector
    if not issubclass(current, ChannelTriggerDependencies):
        current = type("MigrationAutodetector", (ChannelTriggerDependencies, current), {})
    makemigrations.MigrationAutodetector = migrate.MigrationAutodetector = current
    if django.VERSION >= (5, 2):
        makemigrations.Command.autodetector = migrate.Command.autodetector = current
