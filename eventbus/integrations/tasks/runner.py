"""The handler of the task channels: run one task inside the claim transaction.

The task runs in the executor's savepoint like any handler, and its return value is
stored in that same savepoint, so its database effects, its stored result and its event's
``done`` commit together, exactly once. What it does outside the database (an email, an
HTTP call) happens at least once: a crash after it but before the commit runs it again.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from eventbus.errors import GiveUp
from eventbus.event import Event
from eventbus.integrations.tasks.api import (
    TaskContext,
    TaskResult,
    TaskResultStatus,
    task_finished,
    task_started,
)
from eventbus.integrations.tasks.payload import as_json, load_task
from eventbus.integrations.tasks.results import from_event, task_error
from eventbus.models import EventRecord, TaskResultRecord
from eventbus.running.worker import worker_name

log = logging.getLogger("eventbus.tasks")


def run_task(event: Event) -> None:
    """Call the event's task with its arguments; store what it returned."""
    path, args, kwargs = event.require("task", "args", "kwargs")
    task = load_task(path)
    record = EventRecord.objects.get(pk=event.id)  # its attempts so far, for the result
    result = from_event(record, "running", None)
    started = timezone.now()
    object.__setattr__(result, "started_at", result.started_at or started)
    object.__setattr__(result, "last_attempted_at", started)
    result.worker_ids.append(worker_name())
    sender = type(task.get_backend())
    task_started.send(sender, task_result=result)
    if task.takes_context:
        value = task.call(TaskContext(task_result=result), *args, **kwargs)
    else:
        value = task.call(*args, **kwargs)
    try:
        value = as_json(value)
    except (TypeError, ValueError) as exc:  # running it again would not change that
        raise GiveUp(f"task {path} returned a value that is not JSON: {exc}") from exc
    finished = timezone.now()
    TaskResultRecord.objects.create(
        event_id=event.id,
        task_path=path,
        backend=event.row.get("backend", task.backend),
        args=args,
        kwargs=kwargs,
        return_value=value,
        enqueued_at=event.created_at,
        started_at=result.started_at,
        finished_at=finished,
        worker_ids=result.worker_ids,
    )
    _finish(result, TaskResultStatus.SUCCESSFUL, finished, value)
    task_finished.send(sender, task_result=result)


def task_died(event: Event, error: str) -> None:
    """The task will not run again: tell ``task_finished`` receivers it failed."""
    task = load_task(event.row["task"])
    result = from_event(EventRecord.objects.get(pk=event.id), "running", None)
    result.errors.append(task_error(error, task))
    result.worker_ids.append(worker_name())
    _finish(result, TaskResultStatus.FAILED, timezone.now(), None)
    # Receivers log a failure with logger.exception (django-tasks' own does, for error
    # monitoring); outside an except block it would print "NoneType: None".
    try:
        raise TaskDied(f"task {event.id} will not run again: {error}")
    except TaskDied:
        task_finished.send(type(task.get_backend()), task_result=result)


class TaskDied(Exception):
    """A task's event died: the reason its task_finished signal reports a failure."""


def _finish(result: TaskResult, status: str, finished: Any, value: Any) -> None:
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", finished)
    object.__setattr__(result, "_return_value", value)
