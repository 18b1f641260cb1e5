"""The task backend named in TASKS: `eventbus.integrations.tasks.EventbusBackend`."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from eventbus import conf
from eventbus.integrations.tasks import queues, results
from eventbus.integrations.tasks.api import (
    BaseTaskBackend,
    Task,
    TaskResult,
    TaskResultStatus,
    task_enqueued,
)
from eventbus.integrations.tasks.payload import as_json


class EventbusBackend(BaseTaskBackend):
    """Tasks as events: enqueued in the caller's transaction, run by ``listen``.

    ``QUEUES`` (default ``["default"]``) become the channels ``tasks_<queue>``, which
    ``listen --channels`` can give workers of their own. ``OPTIONS``: ``retry``
    (``RetryPolicy`` fields) and ``timeout`` (seconds) for these channels.
    """

    supports_defer = False
    supports_async_task = False  # a coroutine's queries would run outside the claim
    supports_get_result = True
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database = conf.get().DATABASE_ALIAS
        for queue in self.queues:  # already declared at start-up; validates the names
            queues.declare(queue, self.options)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Write the task's event in the current transaction; its id is the result id."""
        self.validate_task(task)
        args, kwargs = as_json(list(args)), as_json(dict(kwargs))
        channel = queues.declare(task.queue_name, self.options)
        payload = {"task": task.module_path, "args": args, "kwargs": kwargs, "backend": self.alias}
        event_id = channel.publish(payload, key=task.module_path, using=self.database)
        result = TaskResult(
            task=task,
            id=str(event_id),
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        return results.get(result_id, self.database)
