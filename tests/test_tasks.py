"""Django's task API on eventbus: enqueue in the caller's transaction, run by listen."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import psycopg
import pytest
from django.db import transaction
from django.test import Client, override_settings
from django_tasks import TaskResultStatus
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist

from blog.models import Tag
from eventbus.models import EventRecord
from eventbus.testing import capture_events, run_events
from tests import sample_tasks
from tests.support import Listener, database_url, wait_until

READY, SUCCESSFUL, FAILED = (
    TaskResultStatus.READY,
    TaskResultStatus.SUCCESSFUL,
    TaskResultStatus.FAILED,
)
THREE_ATTEMPTS = override_settings(
    EVENTBUS={
        "LISTENER_MODULES": ["listeners"],
        "CHANNELS": {"tasks_default": {"retry": {"max_attempts": 3, "base_delay": 0.01}}},
    }
)


class Boom(Exception):
    pass


@pytest.mark.django_db
def test_enqueue_writes_one_event_in_the_callers_transaction() -> None:
    with capture_events() as events:
        result = sample_tasks.add.enqueue(2, b=3)
    [event] = events
    assert (event.channel, str(event.id), result.status) == ("tasks_default", result.id, READY)
    assert event.row == {
        "task": "tests.sample_tasks.add",
        "args": [2],
        "kwargs": {"b": 3},
        "backend": "default",
    }
    assert sample_tasks.add.get_result(result.id).status == READY


@pytest.mark.django_db
def test_a_rollback_enqueues_nothing() -> None:
    with capture_events() as events, pytest.raises(Boom), transaction.atomic():
        result = sample_tasks.add.enqueue(1, 1)
        raise Boom
    assert events == []
    with pytest.raises(TaskResultDoesNotExist):
        sample_tasks.add.get_result(result.id)


@pytest.mark.django_db
def test_a_successful_task_reports_its_return_value_and_effects_once() -> None:
    result = sample_tasks.tag.enqueue("once")
    run_events()
    result.refresh()
    tag = Tag.objects.get(name="once")
    assert (result.status, result.return_value, result.attempts) == (SUCCESSFUL, tag.pk, 1)
    assert result.errors == [] and result.finished_at is not None
    assert run_events() == [], "done: never run again"


@pytest.mark.django_db
def test_a_failing_task_is_retried_and_its_writes_undone_each_time() -> None:
    with THREE_ATTEMPTS:
        eventually = sample_tasks.succeeds_at.enqueue(3)
        never = sample_tasks.tag_then_fail.enqueue("never")
        run_events(retries=True)
    eventually.refresh()
    assert (eventually.status, eventually.return_value, eventually.attempts) == (SUCCESSFUL, 3, 3)
    result = sample_tasks.tag_then_fail.get_result(never.id)
    assert (result.status, result.attempts, len(result.errors)) == (FAILED, 3, 3)
    assert result.errors[0].exception_class is sample_tasks.SampleError
    assert result.errors[-1].traceback.startswith("SampleError: failed after tagging never")
    assert not Tag.objects.filter(name="never").exists(), "each failed attempt was rolled back"
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


@pytest.mark.django_db
def test_give_up_and_a_return_value_that_is_not_json_fail_at_once() -> None:
    gave_up = sample_tasks.gives_up.enqueue()
    unstorable = sample_tasks.returns_a_set.enqueue()
    run_events(retries=True)
    for result, error in ((gave_up, "GiveUp: no point"), (unstorable, "GiveUp: task tests")):
        result.refresh()
        assert (result.status, result.attempts) == (FAILED, 1)
        assert result.errors[0].traceback.startswith(error)


@pytest.mark.django_db
def test_a_task_running_past_its_timeout_is_stopped_and_fails() -> None:
    result = sample_tasks.sleeps.enqueue(30)
    with override_settings(
        EVENTBUS={
            "LISTENER_MODULES": ["listeners"],
            "CHANNELS": {"tasks_default": {"timeout": 0.2, "retry": {"max_attempts": 1}}},
        }
    ):
        [outcome] = run_events()
    result.refresh()
    assert (outcome.status, outcome.seconds < 5) == ("dead", True)
    assert result.status == FAILED
    assert result.errors[0].exception_class_path == "eventbus.errors.HandlerTimeout"


@pytest.mark.django_db(transaction=True)
def test_a_task_held_by_a_worker_reports_running() -> None:
    result = sample_tasks.add.enqueue(1, 2)
    with psycopg.connect(database_url()) as worker:  # a worker's claim holds the row
        worker.execute("SELECT 1 FROM eventbus_event WHERE id = %s FOR UPDATE", [int(result.id)])
        result.refresh()
        assert result.status == TaskResultStatus.RUNNING
    result.refresh()
    assert result.status == READY


@pytest.mark.django_db
def test_unknown_result_ids_and_unsupported_tasks_are_refused() -> None:
    for unknown in ("999999999", "not-a-number"):
        with pytest.raises(TaskResultDoesNotExist):
            sample_tasks.add.get_result(unknown)
    with pytest.raises(InvalidTaskError, match="priority"):
        sample_tasks.add.using(priority=5)


@pytest.mark.django_db
def test_a_result_outlives_its_purged_event() -> None:
    result = sample_tasks.add.enqueue(20, 22)
    run_events()
    EventRecord.objects.filter(pk=result.id).delete()  # as the DONE_RETENTION purge does
    assert sample_tasks.add.get_result(result.id).return_value == 42


@pytest.mark.django_db
def test_operators_find_a_task_in_the_admin_by_its_id(admin_client: Client) -> None:
    result = sample_tasks.add.enqueue(20, 22)
    run_events()
    events = admin_client.get("/admin/eventbus/eventrecord/", {"q": result.id})
    assert (
        f">{result.id}<" in events.content.decode() and "tasks_default" in events.content.decode()
    )
    page = admin_client.get(f"/admin/eventbus/taskresultrecord/{result.id}/change/")
    assert page.status_code == 200 and "tests.sample_tasks.add" in page.content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_listen_runs_tasks_with_retries_and_reports_them(
    start_listener: Callable[..., Listener],
) -> None:
    rolled_back = None
    with pytest.raises(Boom), transaction.atomic():
        rolled_back = sample_tasks.tag.enqueue("rolled back")
        raise Boom
    added = sample_tasks.add.enqueue(2, 3)
    tagged = sample_tasks.tag.enqueue("tagged")
    failing = sample_tasks.tag_then_fail.enqueue("failing")
    start_listener(
        "--processes",
        "2",
        workers=2,
        env_extra={"EVENTBUS_RETRY": '{"max_attempts": 2, "base_delay": 0.1}'},
    )

    def finished(result_id: str) -> object:
        result = sample_tasks.add.get_backend().get_result(result_id)
        return result if result.is_finished else None

    added, tagged, failing = (
        wait_until(lambda r=r: finished(r.id), 30, what=f"task {r.id} to finish")
        for r in (added, tagged, failing)
    )
    assert (added.status, added.return_value) == (SUCCESSFUL, 5)
    assert (tagged.status, tagged.return_value) == (SUCCESSFUL, Tag.objects.get(name="tagged").pk)
    assert (failing.status, failing.attempts) == (FAILED, 2)
    assert [e.exception_class for e in failing.errors] == [sample_tasks.SampleError] * 2
    assert len(failing.worker_ids) == 2 and all(failing.worker_ids)
    assert not Tag.objects.filter(name__in=["failing", "rolled back"]).exists()
    with pytest.raises(TaskResultDoesNotExist):
        sample_tasks.tag.get_result(rolled_back.id)
    assert Tag.objects.filter(name="tagged").count() == 1


DJANGO_6 = (
    "django.tasks needs Django 6.0, which needs Python 3.12; this machine has 3.11 "
    "(the django-tasks backport is tested above)"
)


@pytest.mark.skipif(sys.version_info < (3, 12), reason=DJANGO_6)
def test_django_6_tasks_module() -> None:
    from django.tasks import task_backends

    assert type(task_backends["default"]).__name__ == "EventbusBackend"


@pytest.mark.django_db
def test_a_failed_task_is_logged_with_the_reason_it_died(caplog: pytest.LogCaptureFixture) -> None:
    result = sample_tasks.gives_up.enqueue()
    with caplog.at_level(logging.ERROR, logger="django_tasks"):
        run_events(retries=True)
    [record] = [r for r in caplog.records if r.name == "django_tasks" and "FAILED" in r.message]
    assert record.exc_info is not None, "logged as an exception: with what killed it"
    assert f"task {result.id} will not run again" in str(record.exc_info[1])
