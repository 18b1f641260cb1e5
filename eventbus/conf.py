"""eventbus settings: the ``EVENTBUS`` dict in Django settings, over these defaults."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings

# Settings an operator may set per process from the environment (EVENTBUS_<NAME>).
_ENVIRONMENT: dict[str, Any] = {
    "PROCESSES": int,
    "CONCURRENCY": int,
    "LISTEN_DATABASE_URL": str,
    "HEALTH_INTERVAL": float,
    "FAULT_RATE": float,
    "FAULT_SEED": int,
    "RETRY": json.loads,
    "CHANNELS": json.loads,
    "DONE_RETENTION": float,
    "PURGE_INTERVAL": float,
    "QUEUE_SLOT_EVENTS": int,
    "HISTORY_PARTITION": int,
    "SHUTDOWN_TIMEOUT": float,
    "HANG_GRACE": float,
    "CRASH_LIMIT": int,
    "BATCH_TIME_BUDGET": float,
    "MAX_SAVEPOINTS": int,
    "PAYLOAD_BUDGET": int,
    "TRANSIENT_RETRIES": int,
    "LOG_LEVEL": str,
    "TRACING": lambda v: {"1": True, "true": True, "0": False, "false": False}.get(v.lower()),
    "DEAD_ALERT": str,
    "DEAD_ALERT_INTERVAL": float,
    "ADMIN_BASE_URL": str,
    "ROLLUP": lambda v: v.strip().lower() not in ("0", "false", "no", "off"),
    "ROLLUP_RETENTION": float,
    "LISTENER_MODULES": lambda v: tuple(
        m for m in v.split(",") if m
    ),  # EVENTBUS_RETRY='{"max_attempts": 5, "base_delay": 2}'
}


@dataclass(frozen=True)
class Settings:
    LISTENER_MODULES: tuple[str, ...] = ()
    PROCESSES: int = 1  # listen's worker processes, unless --processes says otherwise
    CONCURRENCY: int = 1  # handler slots (threads) per process, unless --concurrency says
    BATCH_SIZE: int = 100
    POLL_INTERVAL: float = 1.0  # seconds between table polls when no NOTIFY arrives
    SHUTDOWN_TIMEOUT: float = 10.0  # seconds a worker gets to finish its batch on stop
    RECONNECT_MAX_DELAY: float = 10.0
    DATABASE_ALIAS: str = "default"  # the primary; claims and handlers use it
    RETRY: dict[str, Any] = field(default_factory=dict)  # RetryPolicy fields, for all channels
    HANDLER_TIMEOUT: float | None = 60.0  # seconds; None: no limit
    CHANNELS: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-channel overrides
    HEALTH_INTERVAL: float = 10.0  # seconds between checks that the listen connection delivers
    LISTEN_DATABASE_URL: str | None = None  # a direct URL for LISTEN when claims go via a pool
    DONE_RETENTION: float | None = 3 * 86400  # seconds done events are kept; None: forever
    PURGE_INTERVAL: float = 60.0  # seconds between the listener's background purges
    # Storage (eventbus.storing): the dead rows a queue slot gathers before new events go
    # to the other and it is emptied by TRUNCATE (which frees what VACUUM cannot under a
    # held snapshot), and the span of one history partition (retention drops whole
    # partitions: done events stay up to one span longer).
    QUEUE_SLOT_EVENTS: int = 10_000
    HISTORY_PARTITION: int = 86400
    # The dashboard's per-minute rollup (eventbus.operating.rollup): written with each
    # batch's marks unless off; purged with the done events after ROLLUP_RETENTION seconds.
    ROLLUP: bool = True
    ROLLUP_RETENTION: float = 7 * 86400
    # Fault containment (see README, "What happens when..."):
    HANG_GRACE: float = 30.0  # seconds of silence beyond a handler's timeout before a kill
    CRASH_LIMIT: int = 3  # worker deaths on one event before it is made dead
    BATCH_TIME_BUDGET: float = 1.0  # seconds of handling before a batch stops and commits
    MAX_SAVEPOINTS: int = 64  # savepoints per claim transaction (0: no cap)
    PAYLOAD_BUDGET: int = 64 * 1024 * 1024  # bytes of payload a worker holds at once
    TRANSIENT_RETRIES: int = 10  # deadlock/serialization/lock-timeout retries per event
    LOG_LEVEL: str = "INFO"  # the engine's logs, unless the project's LOGGING sets them
    FAULT_RATE: float = 0.0  # chaos testing: fraction of attempts failed on purpose
    FAULT_SEED: int = 0
    # Tracing (eventbus.integrations.tracing): None, on when OpenTelemetry is installed and
    # a tracer provider is configured; False: off, nothing imported; True: always on.
    TRACING: bool | None = None
    # Alerts on death (eventbus.integrations.alerts): "mail_admins", or the dotted path of
    # a hook; at most one per channel per DEAD_ALERT_INTERVAL seconds, across all workers.
    DEAD_ALERT: str | None = None
    DEAD_ALERT_INTERVAL: float = 600.0
    ADMIN_BASE_URL: str = ""  # the site's address, for admin links in alerts (no request)


def get() -> Settings:
    """The EVENTBUS settings; a few may also come from the environment (see README)."""
    overrides: dict[str, Any] = dict(getattr(settings, "EVENTBUS", {}))
    for key, cast in _ENVIRONMENT.items():
        value = os.environ.get(f"EVENTBUS_{key}")
        if value and key == "CHANNELS":  # entries over the settings' entries, one by one
            overrides[key] = {**overrides.get(key, {}), **cast(value)}
        elif value:
            overrides[key] = cast(value)
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown EVENTBUS settings: {sorted(unknown)}; known: {sorted(known)}")
    if "LISTENER_MODULES" in overrides:
        overrides["LISTENER_MODULES"] = tuple(overrides["LISTENER_MODULES"])
    return Settings(**overrides)
