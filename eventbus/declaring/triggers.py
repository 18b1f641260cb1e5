"""The compiled form of a channel trigger, as migrations store it.

django-pgtrigger creates one PL/pgSQL function per trigger, but its removal SQL drops
only the trigger (``DROP TRIGGER``), so removing a channel left a ``pgtrigger_eb_…``
function behind in every database. A channel trigger compiles to this subclass instead:
its removal also drops its function. Migrations name this class, so keep its path.
"""

from __future__ import annotations

from typing import Any

from pgtrigger import compiler


class CompiledChannelTrigger(compiler.Trigger):
    """A compiled channel trigger whose removal drops its function with it."""

    @classmethod
    def of(cls, trigger: compiler.Trigger) -> CompiledChannelTrigger:
        return cls(name=trigger.name, sql=trigger.sql)

    def __eq__(self, other: object) -> bool:
        # Equal to pgtrigger's own compiled form of the same SQL: migrations written before
        # this class existed must not look changed to makemigrations.
        return (
            isinstance(other, compiler.Trigger)
            and self.name == other.name
            and self.sql == other.sql
        )

    __hash__ = None  # type: ignore[assignment]  # as pgtrigger's: mutable, compared by value

    @property
    def uninstall_sql(self) -> str:
        # The function is this trigger's alone: its name carries the model and trigger.
        return f"{super().uninstall_sql} DROP FUNCTION IF EXISTS {self.sql.pgid}();"

    def deconstruct(self) -> tuple[str, Any, dict[str, Any]]:
        return (
            "eventbus.declaring.triggers.CompiledChannelTrigger",
            [],
            {
                "name": self.name,
                "sql": self.sql,
            },
        )
