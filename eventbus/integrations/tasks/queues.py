"""One code-published channel per task queue, declared at start-up from ``TASKS``.

``listen`` decides at start which channels it handles, so the queues' channels must be
declared before it does: ``EventbusConfig.ready`` calls `declare_from_settings`. Nothing
here imports the task API, so a project without it pays nothing.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from eventbus.declaring.channel import Channel
from eventbus.declaring.retry import RetryPolicy

BACKEND = "eventbus.integrations.tasks.EventbusBackend"
_BACKENDS = {BACKEND, "eventbus.integrations.tasks.backend.EventbusBackend"}
PREFIX = "tasks_"
_QUEUE = re.compile(r"^[a-z0-9_]{1,32}$")  # the channel name is PREFIX + queue

_channels: dict[str, Channel] = {}


def channel_name(queue: str) -> str:
    """The channel of a queue: ``tasks_default`` for the queue ``default``."""
    if not _QUEUE.match(queue):
        raise ImproperlyConfigured(
            f"task queue {queue!r}: eventbus queue names are 1 to 32 characters among "
            "a-z, 0-9 and _ (each queue is the channel tasks_<queue>)"
        )
    return PREFIX + queue


def declare(queue: str, options: dict[str, Any] | None = None) -> Channel:
    """The queue's channel, declared (with the task runner as its handler) on first use.

    `options` are the backend's ``OPTIONS``: ``retry`` (``RetryPolicy`` fields) and
    ``timeout`` (seconds) for its queues; ``EVENTBUS["CHANNELS"]`` still overrides them.
    """
    channel = _channels.get(queue)
    if channel is not None:
        return channel
    from eventbus.integrations.tasks import runner  # imports the task API

    options = options or {}
    retry = options.get("retry")
    channel = Channel(
        channel_name(queue),
        operations=(),
        retry=RetryPolicy(**retry) if retry else None,
        timeout=options.get("timeout"),
    )
    channel.on(runner.run_task)
    channel.on_dead(runner.task_died)
    _channels[queue] = channel
    return channel


def channel_names() -> list[str]:
    """The task channels declared in this process."""
    return sorted(channel.name for channel in _channels.values())


def declare_from_settings() -> None:
    """Declare the channels of every queue of every eventbus backend in ``TASKS``."""
    for params in (getattr(settings, "TASKS", None) or {}).values():
        if params.get("BACKEND") in _BACKENDS:
            for queue in params.get("QUEUES") or ["default"]:
                declare(queue, params.get("OPTIONS"))
