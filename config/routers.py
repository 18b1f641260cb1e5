"""The reference site's read replica: reads go to it, writes to the primary.

The usual Django read-replica router. It is second in ``DATABASE_ROUTERS``, after
``eventbus.PrimaryForHandlers``, which overrides it while a handler runs.
"""

from __future__ import annotations

from typing import Any

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
