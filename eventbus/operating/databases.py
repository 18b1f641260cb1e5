"""A database that does not exist yet: one line with the command that creates it.

A newcomer's first `DATABASE_URL` often names a database nobody has created. Django then
prints a traceback of some ninety lines whose last one says so; this says it in one line,
with the remedy to copy.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from django.db import connections

# PostgreSQL's FATAL message; libpq reports it with no SQLSTATE, so the text is all there is.
_MISSING = re.compile(r'database "(?P<name>[^"]+)" does not exist')


def missing_database(exc: BaseException) -> str | None:
    """The one-line remedy if `exc` (or what caused it) says a database does not exist."""
    seen: BaseException | None = exc
    while seen is not None:
        found = _MISSING.search(str(seen))
        if found:
            return _remedy(found["name"])
        seen = seen.__cause__ or seen.__context__
    return None


def _remedy(name: str) -> str:
    options: list[str] = []
    settings = _settings_naming(name)
    for flag, key in (("-h", "HOST"), ("-p", "PORT"), ("-U", "USER")):
        value = str(settings.get(key) or (settings.get("OPTIONS") or {}).get(key.lower()) or "")
        if value:
            options += [flag, value]
    command = shlex.join(["createdb", *options, name])
    return (
        f'database "{name}" does not exist: create it with `{command}`, '
        "then run ./manage.py migrate"
    )


def _settings_naming(name: str) -> dict[str, Any]:
    """The settings of the configured database called `name`, for its host, port and user."""
    for alias in connections:
        settings = connections[alias].settings_dict
        if settings.get("NAME") == name:
            return settings
    return {}
