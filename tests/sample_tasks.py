"""Tasks for tests/test_tasks.py, importable by the listener processes the tests start."""

from __future__ import annotations

from django_tasks import TaskContext, task

from blog.models import Tag
from eventbus import GiveUp


class SampleError(Exception):
    pass


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def tag(name: str) -> int:
    """A database effect: committed with the task's success, exactly once."""
    return Tag.objects.create(name=name).pk


@task
def tag_then_fail(name: str) -> None:
    Tag.objects.create(name=name)
    raise SampleError(f"failed after tagging {name}")


@task(takes_context=True)
def succeeds_at(context: TaskContext, attempt: int) -> int:
    if context.attempt < attempt:
        raise SampleError(f"attempt {context.attempt} of {attempt}")
    return context.attempt


@task
def gives_up() -> None:
    raise GiveUp("no point in retrying")


@task
def returns_a_set() -> set[int]:
    return {1, 2}


@task
def sleeps(seconds: float) -> None:
    import time

    time.sleep(seconds)
