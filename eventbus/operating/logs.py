"""Operator logs: human-readable by default, JSON lines with `--log-format json`.

Engine log records carry `event_id`, `channel`, `attempt`, `duration_ms` and `state` as
extra fields where they apply; the JSON format puts them at the top level of each line.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FIELDS = ("event_id", "channel", "attempt", "duration_ms", "state", "worker")


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
