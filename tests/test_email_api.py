"""POST /api/emails/: answered at once with a task id; the listener sends the emails."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client, override_settings

from blog import mail, tasks
from eventbus.models import EventRecord
from eventbus.testing import run_events
from tests import sample_tasks, test_roles
from tests.support import Listener, SMTPServer, wait_until
from tests.test_api import call

listener_role = test_roles.listener_role  # the reference site's listener role (a fixture)

EMAILS = {
    "addresses": ["ada@example.com", "bob@example.com"],
    "subject": "Release notes",
    "body": "Version 2 is out.",
}


def smtp_settings(port: int) -> override_settings:
    return override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
    )


@pytest.mark.django_db
def test_a_signed_request_is_accepted_at_once_with_a_task_id_and_status_url(
    client: Client, smtp: SMTPServer
) -> None:
    response = call(client, "POST", "/api/emails/", EMAILS)
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "READY"
    assert accepted["status_url"] == f"/api/emails/{accepted['task_id']}/"
    status = call(client, "GET", accepted["status_url"]).json()
    assert (status["task_id"], status["status"], status["attempts"]) == (
        accepted["task_id"],
        "READY",
        0,
    )
    assert smtp.mailbox.snapshot() == [], "nothing is sent by the web request"


@pytest.mark.django_db
def test_the_task_sends_one_email_per_address_and_reports_success(
    client: Client, smtp: SMTPServer
) -> None:
    task_id = call(client, "POST", "/api/emails/", EMAILS).json()["task_id"]
    with smtp_settings(smtp.port):
        run_events()
    mail.close()
    messages = smtp.mailbox.snapshot()
    assert sorted(m["To"] for m in messages) == EMAILS["addresses"]
    assert {m["Subject"] for m in messages} == {"Release notes"}
    assert {m["X-Eventbus-Task"] for m in messages} == {task_id}
    assert len({m["Message-ID"] for m in messages}) == 2
    status = call(client, "GET", f"/api/emails/{task_id}/").json()
    assert (status["status"], status["return_value"], status["errors"]) == (
        "SUCCESSFUL",
        {"sent": 2},
        [],
    )
    assert status["finished_at"] is not None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({**EMAILS, "addresses": []}, "addresses must be a non-empty list of email addresses"),
        ({**EMAILS, "addresses": ["not an address"]}, "not an email address: 'not an address'"),
        ({"addresses": ["a@example.com"]}, "missing or not a string: subject, body"),
        (["a@example.com"], "body must be a JSON object"),
    ],
)
def test_bad_requests_get_a_400_and_enqueue_nothing(
    client: Client, payload: object, message: str
) -> None:
    response = call(client, "POST", "/api/emails/", payload)
    assert (response.status_code, response.json()["error"]) == (400, message)
    assert not EventRecord.objects.exists()


@pytest.mark.django_db
def test_unsigned_requests_and_unknown_tasks_are_refused(client: Client) -> None:
    assert client.post("/api/emails/", EMAILS, content_type="application/json").status_code == 401
    assert client.get("/api/emails/1/").status_code == 401
    assert call(client, "GET", "/api/emails/999999/").status_code == 404
    other_task = sample_tasks.add.enqueue(1, 2).id  # a task, but not an email task
    assert call(client, "GET", f"/api/emails/{other_task}/").status_code == 404


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_emails_go_out_from_the_listener(
    client: Client, smtp: SMTPServer, start_listener: Callable[..., Listener]
) -> None:
    start_listener(smtp=smtp, workers=1)
    status_url = call(client, "POST", "/api/emails/", EMAILS).json()["status_url"]
    wait_until(lambda: len(smtp.mailbox.snapshot()) == 2, 20, what="both emails")
    done = wait_until(
        lambda: (s := call(client, "GET", status_url).json())["status"] == "SUCCESSFUL" and s,
        10,
        what="the task to report success",
    )
    assert (done["attempts"], done["return_value"]) == (1, {"sent": 2})


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_listener_under_the_least_privilege_role_runs_tasks(
    listener_role: str, smtp: SMTPServer, start_listener: Callable[..., Listener]
) -> None:
    """It stores the task's return value: the role may write the task result table."""
    result = tasks.send_emails.enqueue(["ada@example.com"], "Hi", "Hello.")
    start_listener(
        "--channels", "tasks_default", smtp=smtp, env_extra={"DATABASE_URL": listener_role}
    )
    wait_until(lambda: tasks.send_emails.get_result(result.id).is_finished, 20, what="the task")
    assert tasks.send_emails.get_result(result.id).return_value == {"sent": 1}
