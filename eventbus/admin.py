"""The engine's admin pages, registered when Django's admin autodiscovery imports this
module: events (read-only, with Retry and Discard), workers, task results. They live in
``eventbus.integrations.admin``."""

from eventbus.integrations.admin import events, tasks, workers

__all__ = ["events", "tasks", "workers"]
