"""The usual Django router of a project with a second database: the analytics app's tables
are migrated to "other" only, eventbus's to every database that holds channels, the rest to
"default". It has no opinion on reads and writes (they go to "default")."""

from __future__ import annotations

from typing import Any

OTHER = "other"


class AnalyticsRouter:
    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        if app_label == "eventbus":
            return True
        if app_label == "analytics":
            return db == OTHER
        return db != OTHER
