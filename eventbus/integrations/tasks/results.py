"""A task's ``TaskResult``, read from its event and its stored return value.

The event is the truth while it exists: its state gives the status (``running`` while a
worker holds it), its error list the errors, one per failed attempt. Once the event is
purged, the stored result (``TaskResultRecord``) still answers for a finished task.
"""

from __future__ import annotations

import builtins
import sys
from datetime import datetime
from typing import Any

from eventbus import errors as eventbus_errors
from eventbus.event import DEAD, DONE, FAILED, PENDING
from eventbus.integrations.tasks import queues
from eventbus.integrations.tasks.api import (
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
)
from eventbus.integrations.tasks.payload import load_task
from eventbus.models import EventRecord, TaskResultRecord
from eventbus.operating import status as event_status

STATUS = {
    PENDING: TaskResultStatus.READY,
    FAILED: TaskResultStatus.READY,  # it runs again after its backoff
    event_status.RUNNING: TaskResultStatus.RUNNING,
    DONE: TaskResultStatus.SUCCESSFUL,
    DEAD: TaskResultStatus.FAILED,
}


def get(result_id: str, database: str) -> TaskResult:
    """The result of the task enqueued as event `result_id`; TaskResultDoesNotExist if none."""
    try:
        event_id = int(result_id)
    except (TypeError, ValueError):
        raise TaskResultDoesNotExist(result_id) from None
    record = (
        EventRecord.objects.using(database)
        .filter(pk=event_id, channel__in=queues.channel_names())
        .first()
    )
    stored = TaskResultRecord.objects.using(database).filter(pk=event_id).first()
    if record is not None:
        state = event_status.describe([record], database)[0]["state"]
        return from_event(record, state, stored)
    if stored is not None:
        return from_stored(stored)
    raise TaskResultDoesNotExist(result_id)


def from_event(record: EventRecord, state: str, stored: TaskResultRecord | None) -> TaskResult:
    payload = record.new or {}
    task = load_task(payload["task"])
    entries = record.errors or []
    worker_ids = [entry.get("worker") or "" for entry in entries]
    if state == DONE and record.worker:
        worker_ids.append(record.worker)
    finished = record.finished_at if state in (DONE, DEAD) else None
    last_at = finished or (_parse_time(entries[-1].get("at")) if entries else None)
    result = TaskResult(
        task=task,
        id=str(record.pk),
        status=STATUS[state],
        enqueued_at=record.created_at,
        started_at=record.first_claimed_at,
        finished_at=finished,
        last_attempted_at=last_at,
        args=payload.get("args", []),
        kwargs=payload.get("kwargs", {}),
        backend=payload.get("backend", "default"),
        errors=[task_error(entry.get("error") or "", task) for entry in entries],
        worker_ids=worker_ids,
    )
    if state == DONE and stored is not None:
        object.__setattr__(result, "_return_value", stored.return_value)
    return result


def from_stored(stored: TaskResultRecord) -> TaskResult:
    result = TaskResult(
        task=load_task(stored.task_path),
        id=str(stored.pk),
        status=TaskResultStatus.SUCCESSFUL,
        enqueued_at=stored.enqueued_at,
        started_at=stored.started_at,
        finished_at=stored.finished_at,
        last_attempted_at=stored.finished_at,
        args=stored.args,
        kwargs=stored.kwargs,
        backend=stored.backend,
        errors=[],
        worker_ids=list(stored.worker_ids),
    )
    object.__setattr__(result, "_return_value", stored.return_value)
    return result


def task_error(text: str, task: Task) -> TaskError:
    """An attempt's error; its text is eventbus's (``Name: message``, then the frames)."""
    return TaskError(exception_class_path=exception_path(text, task), traceback=text)


def exception_path(text: str, task: Task) -> str:
    """The dotted path of the class named by an error text's first word.

    The stored text names the class only (``SMTPDataError: ...``): it is looked up among
    the builtins, the task's module and eventbus's errors; otherwise the bare name.
    """
    name = text.split(":", 1)[0].strip()
    places: list[Any] = [builtins, sys.modules.get(task.func.__module__), eventbus_errors]
    for place in places:
        found = getattr(place, name, None) if place is not None else None
        if isinstance(found, type) and issubclass(found, BaseException):
            return f"{found.__module__}.{found.__qualname__}"
    return name


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
