"""Background work through Django's task API, run by the `listen` workers."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage
from django_tasks import TaskContext, task

from blog import mail


def message_id(task_id: str, index: int) -> str:
    """The same on every attempt of the task, so receivers can drop a repeated email."""
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    return f"<eventbus.task.{task_id}.{index}@{domain}>"


@task(takes_context=True)
def send_emails(context: TaskContext, addresses: list[str], subject: str, body: str) -> dict:
    """One email to each address. A retry after a failure sends them all again, each with
    the same Message-ID as before (at least once, never silently lost)."""
    task_id = context.task_result.id
    for index, address in enumerate(addresses):
        mail.send(
            EmailMessage(
                subject=subject,
                body=body,
                to=[address],
                headers={"Message-ID": message_id(task_id, index), "X-Eventbus-Task": task_id},
            )
        )
    return {"sent": len(addresses)}
