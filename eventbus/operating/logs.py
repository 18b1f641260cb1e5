"""Operator logs: human-readable by default, JSON lines with `--log-format json`.

Engine log records carry `event_id`, `channel`, `attempt`, `duration_ms` and `state` as
extra fields where they apply; the JSON format puts them at the top level of each line.

A project need not configure logging at all: unless its `LOGGING` sets up the `eventbus`
logger, the engine logs to stderr itself, at `EVENTBUS_LOG_LEVEL` (INFO by default).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from django.core.exceptions import ImproperlyConfigured

FIELDS = ("event_id", "channel", "attempt", "duration_ms", "state", "worker")
# Time, level and process (`MainProcess` is the supervisor, `worker-0` a worker).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        line.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def install_default(level: str) -> None:
    """Log the engine's start, state changes and errors unless the project said otherwise.

    Runs at app start-up, after Django applied the project's `LOGGING`. A project that gave
    the `eventbus` logger handlers or a level keeps exactly what it set.
    A project that logs through the root logger keeps its handlers and format: the engine
    only sets its own level. Otherwise the engine adds one stderr handler with time, level
    and process: without it, Python prints bare warnings and drops INFO. Forked workers
    inherit it.
    """
    name = level.upper()
    if name not in LEVELS:
        raise ImproperlyConfigured(
            f"EVENTBUS_LOG_LEVEL (or EVENTBUS['LOG_LEVEL']) is {level!r}: "
            f"use one of {', '.join(LEVELS)}"
        )
    logger = logging.getLogger("eventbus")
    if logger.handlers or logger.level != logging.NOTSET:
        return
    logger.setLevel(name)
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()  # stderr, as Django's own console handler
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)


def configure(fmt: str) -> None:
    """Switch the `eventbus` logger's handlers to `fmt` ("text" leaves them as set up)."""
    if fmt != "json":
        return
    logger = logging.getLogger("eventbus")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
