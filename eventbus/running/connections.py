"""Direct connections the engine opens itself, next to Django's.

The LISTEN connection must reach PostgreSQL directly (or through session pooling):
through PgBouncer's transaction pooling, LISTEN silently receives nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from eventbus import conf

# Keys of Django's psycopg connection parameters that are not libpq parameters.
_DJANGO_ONLY = {
    "context",
    "cursor_factory",
    "prepare_threshold",
    "isolation_level",
    "server_side_binding",
    "assume_role",
    "pool",
}


def connection_params(wrapper: BaseDatabaseWrapper) -> dict[str, Any]:
    """libpq parameters for a Django database, exactly as Django would connect.

    Built from Django's own ``get_connection_params()``, so OPTIONS such as a unix-socket
    ``host`` or ``sslmode`` apply to the listen connection as they do to Django's.
    """
    params = wrapper.get_connection_params()
    return {k: v for k, v in params.items() if k not in _DJANGO_ONLY and v not in (None, "")}


# Every connection the engine opens notices a vanished peer: TCP keepalives when idle,
# tcp_user_timeout when data sent goes unacknowledged (libpq ignores both on unix sockets).
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}


def add_keepalives(wrapper: BaseDatabaseWrapper) -> None:
    """Give Django's connection `wrapper` the engine's keepalives, unless OPTIONS set them."""
    options = wrapper.settings_dict.setdefault("OPTIONS", {})
    for key, value in KEEPALIVES.items():
        options.setdefault(key, value)


def direct_url(alias: str) -> str | None:
    """EVENTBUS_LISTEN_DATABASE_URL, for the primary alias only: it names one database,
    and a listener serving another alias must not LISTEN to (nor log crashes into) it."""
    settings = conf.get()
    return settings.LISTEN_DATABASE_URL if alias == settings.DATABASE_ALIAS else None


def connect_side(alias: str = "default") -> psycopg.Connection[Any]:
    """An autocommitted connection beside the claim connection, as Django connects.

    It writes what a rollback of the claim transaction must not erase (the crash
    ledger), while the claim transaction is open. So when claims go through a pool
    (EVENTBUS_LISTEN_DATABASE_URL set), it goes direct, as the LISTEN connection does:
    through the pool, handler slots holding every server connection in their claims
    would wait for it forever. Its commits need not wait for the disk: losing the last
    few entries in a server crash only forgets a few unfinished starts.
    """
    options = {"connect_timeout": 5, **KEEPALIVES}
    url = direct_url(alias)
    if url:  # direct, beside the LISTEN connection: it is written while claims hold the pool
        conn = psycopg.connect(url, autocommit=True, application_name="eventbus-ledger", **options)
    else:
        params = {**options, **connection_params(connections[alias])}
        conn = psycopg.connect(autocommit=True, application_name="eventbus-ledger", **params)
    conn.execute("SET synchronous_commit = off")
    # The ledger's statement has a large estimated cost (it may expand id runs) and a
    # tiny real one: with JIT on, PostgreSQL compiled it every time, 170 ms a batch.
    conn.execute("SET jit = off")
    return conn


def connect_listen(
    alias: str = "default", application_name: str = "eventbus-listen"
) -> psycopg.Connection[Any]:
    """The LISTEN connection: EVENTBUS_LISTEN_DATABASE_URL if set, else as Django connects.

    TCP keepalives let the kernel notice a peer that vanished; the worker's ping notices
    a connection that is open but no longer delivers.
    """
    options = {"connect_timeout": 5, **KEEPALIVES}
    url = direct_url(alias)
    if url:
        return psycopg.connect(url, autocommit=True, application_name=application_name, **options)
    params = {**options, **connection_params(connections[alias])}
    return psycopg.connect(autocommit=True, application_name=application_name, **params)
