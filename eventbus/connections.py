"""Direct connections the engine opens itself, next to Django's.

The LISTEN connection must reach PostgreSQL directly (or through session pooling):
through PgBouncer's transaction pooling, LISTEN silently receives nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections
from psycopg.conninfo import make_conninfo

_PASSTHROUGH_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "options")


def conninfo(alias: str = "default") -> str:
    """A libpq connection string for the Django database `alias`."""
    settings: dict[str, Any] = connections[alias].settings_dict
    params = {
        "dbname": settings.get("NAME") or None,
        "user": settings.get("USER") or None,
        "password": settings.get("PASSWORD") or None,
        "host": settings.get("HOST") or None,
        "port": str(settings["PORT"]) if settings.get("PORT") else None,
    }
    options = settings.get("OPTIONS") or {}
    params.update({k: options[k] for k in _PASSTHROUGH_OPTIONS if k in options})
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def connect_listen(alias: str = "default") -> psycopg.Connection[Any]:
    return psycopg.connect(
        conninfo(alias), autocommit=True, application_name="eventbus-listen", connect_timeout=5
    )
