"""The reference site's read replica: reads go to it, writes to the primary.

The usual Django read-replica router. It is second in ``DATABASE_ROUTERS``, after
``eventbus.PrimaryForHandlers``, which overrides it while a handler runs or a
``read_primary()`` block does: the webhook API's views (``blog/api.py``) and, through
the middleware below, the admin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from eventbus import read_primary

REPLICA = "replica"
PRIMARY = "default"


class ReadReplica:
    def db_for_read(self, model: type, **hints: Any) -> str:
        return REPLICA

    def db_for_write(self, model: type, **hints: Any) -> str:
        return PRIMARY

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # one database, two copies of it

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == PRIMARY  # the replica receives the primary's schema by replication


def admin_reads_primary(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Middleware: the admin reads the primary. Each of its pages follows a write: the
    login's session (on a lagging replica, a staff member just logged in is sent back to
    the login page), the object just saved ("doesn't exist. Perhaps it was deleted?")."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path.startswith(reverse("admin:index")):
            with read_primary():
                return get_response(request)
        return get_response(request)

    return middleware
