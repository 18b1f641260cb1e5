"""The engine's admin pages, registered when Django's admin autodiscovery imports this
module: the dashboard, events (read-only, with Retry and Discard), workers, task results.
They live in ``eventbus.integrations.admin`` and ``eventbus.integrations.dashboard``."""

from eventbus.integrations import dashboard
from eventbus.integrations.admin import events, tasks, workers

__all__ = ["dashboard", "events", "tasks", "workers"]
