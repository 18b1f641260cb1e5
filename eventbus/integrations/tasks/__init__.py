"""Django's task API (``django.tasks``, or the ``django-tasks`` backport) on eventbus.

``TASKS = {"default": {"BACKEND": "eventbus.integrations.tasks.EventbusBackend"}}`` makes
``@task`` functions events of a code-published channel per queue (``tasks_<queue>``):

- ``.enqueue()`` writes the event in the caller's transaction: a rollback enqueues nothing;
- ``listen`` runs them like any handler: retries, timeouts, dead letters, admin, metrics;
- the return value is stored in the claim transaction, with the event's ``done``;
- ``get_result(id)`` reads the event (and the stored return value).

The modules are split so that declaring the queues' channels at start-up
(``queues``) does not import the task API, which may not be installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EventbusBackend"]


def __getattr__(name: str) -> Any:
    if name == "EventbusBackend":  # imported on demand: it needs the task API installed
        from eventbus.integrations.tasks.backend import EventbusBackend

        return EventbusBackend
    raise AttributeError(name)
