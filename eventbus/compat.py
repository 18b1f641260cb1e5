"""What differs between the Django versions eventbus supports (4.2 LTS and 5.2 LTS).

Everything version-dependent lives here, so the rest of the engine reads as if one
Django existed, and dropping 4.2 later means deleting this module's branches.
"""

from __future__ import annotations

from typing import Any

import django
from django.db import migrations, models
from django.db.models.functions import Now
from django.utils import timezone

from eventbus import sql

# Django 5.0 added Field(db_default=...); 5.2 added Options.pk_fields.
HAS_DB_DEFAULT = django.VERSION >= (5, 0)
HAS_PK_FIELDS = django.VERSION >= (5, 2)


def db_default(value: Any, *, default: Any = models.NOT_PROVIDED) -> dict[str, Any]:
    """Field options for a default that the database itself applies.

    The channel triggers insert events without naming these columns, so their defaults
    must exist in the database. Django 5 declares them with ``db_default``. Django 4.2
    cannot, so there the field gets an ORM default (``timezone.now`` for ``Now()``) and the
    eventbus migrations set the database's own with :func:`set_database_defaults`.
    """
    if HAS_DB_DEFAULT:
        options = {"db_default": value}
        if default is not models.NOT_PROVIDED:
            options["default"] = default
        return options
    if default is models.NOT_PROVIDED:
        default = timezone.now if isinstance(value, Now) else value
    return {"default": default}


def set_database_defaults(table: str, **defaults: str) -> list[migrations.RunSQL]:
    """Migration operations giving ``table``'s columns their database defaults (SQL text).

    None on Django 5, where ``db_default`` already did it, so a database migrated on either
    version has the same schema and the same migration history.
    """
    if HAS_DB_DEFAULT:
        return []
    return [
        migrations.RunSQL(
            sql.set_column_default(table, column, expression),
            sql.drop_column_default(table, column),
        )
        for column, expression in defaults.items()
    ]


def pk_fields(model: type[models.Model]) -> list[models.Field]:
    """Every primary-key field of a model: one, or several for a ``CompositePrimaryKey``."""
    if HAS_PK_FIELDS:
        return list(model._meta.pk_fields)
    return [model._meta.pk]
