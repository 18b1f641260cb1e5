"""What a task's event carries, and the JSON form of arguments and return values."""

from __future__ import annotations

import json
from typing import Any

from django.utils.module_loading import import_string

from eventbus.errors import MalformedEvent
from eventbus.integrations.tasks.api import Task


def as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists); TypeError if it cannot."""
    return json.loads(json.dumps(value))


def load_task(path: str) -> Task:
    """The ``@task`` object at `path` (a module attribute, as the decorator leaves it)."""
    task = import_string(path)
    if not isinstance(task, Task):
        raise MalformedEvent(f"{path} is not a task (decorate the function with @task)")
    return task
