"""The bare project, plus its own LOGGING for the `eventbus` logger: the engine must follow it."""

from __future__ import annotations

from tests.bare_settings import *  # noqa: F403

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"ours": {"format": "OURS [%(levelname)s] %(name)s | %(message)s"}},
    "handlers": {"ours": {"class": "logging.StreamHandler", "formatter": "ours"}},
    "loggers": {"eventbus": {"handlers": ["ours"], "level": "INFO", "propagate": False}},
}
