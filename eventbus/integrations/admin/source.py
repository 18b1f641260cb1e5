"""The row an event was made from: its model (found by table name) and, where that model
is in the admin, a link to the row's admin page.

An event names its table (``table_name``) and carries the row (``new``, or ``old`` for a
delete) as the trigger saw it, columns by name. The row's primary key column is read
from there; a channel that leaves the key column out of its payload gets no link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.contrib.admin import AdminSite
from django.contrib.admin.utils import quote
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import NoReverseMatch, reverse

from eventbus.models import EventRecord


@dataclass(frozen=True)
class Source:
    table: str
    model: type[models.Model] | None = None
    pk: Any = None
    url: str | None = None  # the row's admin page; None where there is none to show
    exists: bool | None = None  # None: not looked up (no model or no key)


def model_for_table(table: str) -> type[models.Model] | None:
    """The installed model whose table this is (many-to-many tables included)."""
    for model in apps.get_models(include_auto_created=True):
        if model._meta.db_table == table:
            return model
    return None


def find(record: EventRecord, site: AdminSite) -> Source:
    model = model_for_table(record.table_name) if record.table_name else None
    row = record.new if isinstance(record.new, dict) else record.old
    if model is None or not isinstance(row, dict):
        return Source(record.table_name, model)
    pk = row.get(model._meta.pk.column)
    if pk is None:
        return Source(record.table_name, model)
    try:
        exists = model._default_manager.filter(pk=pk).exists()
    except (ValidationError, ValueError, TypeError):  # a key the field cannot take
        return Source(record.table_name, model, pk)
    url = None
    if exists and site.is_registered(model):
        opts = model._meta
        try:
            url = reverse(
                f"{site.name}:{opts.app_label}_{opts.model_name}_change",
                args=[quote(pk)],
                current_app=site.name,
            )
        except NoReverseMatch:
            url = None
    return Source(record.table_name, model, pk, url, exists)
