"""The base of eventbus's operator commands: a missing database is one line, not a trace.

In any project, not only the reference site (whose ``manage.py`` also catches it): a
``DATABASE_URL`` naming a database nobody created yet is the first thing a newcomer meets.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError

from eventbus.operating import databases


class EventbusCommand(BaseCommand):
    def execute(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute(*args, **options)
        except OperationalError as exc:
            remedy = databases.missing_database(exc)
            if remedy is None:
                raise
            raise CommandError(remedy) from None
