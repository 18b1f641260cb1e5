"""eventbus settings: the ``EVENTBUS`` dict in Django settings, over these defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings


@dataclass(frozen=True)
class Settings:
    LISTENER_MODULES: tuple[str, ...] = ()
    BATCH_SIZE: int = 100
    POLL_INTERVAL: float = 1.0  # seconds between table polls when no NOTIFY arrives
    SHUTDOWN_TIMEOUT: float = 10.0  # seconds a worker gets to finish its batch on stop
    RECONNECT_MAX_DELAY: float = 10.0
    DATABASE_ALIAS: str = "default"  # the primary; claims and handlers use it


def get() -> Settings:
    overrides: dict[str, Any] = dict(getattr(settings, "EVENTBUS", {}))
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown EVENTBUS settings: {sorted(unknown)}; known: {sorted(known)}")
    if "LISTENER_MODULES" in overrides:
        overrides["LISTENER_MODULES"] = tuple(overrides["LISTENER_MODULES"])
    return Settings(**overrides)
