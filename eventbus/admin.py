"""Events in the Django admin: filter, search by id, read payload and errors, retry, discard."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from eventbus.integrations import dashboard  # noqa: F401 (registers Event bus → Dashboard)
from eventbus.models import EventRecord, TaskResultRecord, WorkerRecord
from eventbus.operating import maintenance
from eventbus.sql import Scope


def _pretty(value: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


@admin.register(EventRecord)
class EventAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "channel",
        "key",
        "state",
        "attempts",
        "created_at",
        "finished_at",
        "worker",
        "error_summary",
    )
    list_filter = ("state", "channel")
    search_fields = ("key",)
    search_help_text = "An event id, or a key."
    ordering = ("-id",)
    actions = ("retry_events", "discard_events")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "channel",
                    "operation",
                    "table_name",
                    "key",
                    "state",
                    "attempts",
                    "worker",
                )
            },
        ),
        ("Times", {"fields": ("created_at", "first_claimed_at", "finished_at", "run_after")}),
        ("Payload", {"fields": ("old_row", "new_row")}),
        ("Errors", {"fields": ("last_error_text", "error_history")}),
    )
    # Everything shown is read-only: events are written by triggers and the engine.
    readonly_fields = tuple(name for _, group in fieldsets for name in group["fields"])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # events are written by triggers, not by hand

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[EventRecord], search_term: str
    ) -> tuple[QuerySet[EventRecord], bool]:
        term = search_term.strip()
        if term.isdigit():
            return queryset.filter(id=int(term)) | queryset.filter(key=term), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="last error")
    def error_summary(self, record: EventRecord) -> str:
        return (record.last_error or "").split("\n", 1)[0][:80]

    @admin.display(description="old row")
    def old_row(self, record: EventRecord) -> str:
        return _pretty(record.old)

    @admin.display(description="new row")
    def new_row(self, record: EventRecord) -> str:
        return _pretty(record.new)

    @admin.display(description="last error")
    def last_error_text(self, record: EventRecord) -> str:
        return format_html("<pre>{}</pre>", record.last_error or "")

    @admin.display(description="every attempt's error")
    def error_history(self, record: EventRecord) -> str:
        return _pretty(record.errors)

    @admin.action(description="Retry: re-queue the selected failed or dead events")
    def retry_events(self, request: HttpRequest, queryset: QuerySet[EventRecord]) -> None:
        ids = tuple(queryset.values_list("id", flat=True))
        done = maintenance.requeue(Scope(states=maintenance.REQUEUABLE, ids=ids))
        self.message_user(
            request,
            f"Re-queued {len(done)} event(s); the others were not failed or dead."
            if len(done) < len(ids)
            else f"Re-queued {len(done)} event(s).",
            messages.SUCCESS,
        )

    @admin.action(description="Discard: stop retrying the selected pending or failed events")
    def discard_events(self, request: HttpRequest, queryset: QuerySet[EventRecord]) -> None:
        ids = list(queryset.values_list("id", flat=True))
        reason = f"Discarded in the admin by {request.user}"
        done = maintenance.discard(ids, reason)
        self.message_user(request, f"Discarded {len(done)} event(s).", messages.SUCCESS)


@admin.register(WorkerRecord)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("name", "host", "pid", "channels", "started_at", "last_seen")
    readonly_fields = ("name", "host", "pid", "channels", "started_at", "last_seen")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(TaskResultRecord)
class TaskResultAdmin(admin.ModelAdmin):
    """Return values of Django tasks; the task itself (state, errors, retry) is its event,
    under Events with the same id."""

    list_display = ("event_id", "task_path", "finished_at", "attempts")
    search_fields = ("task_path",)
    ordering = ("-event_id",)
    fields = (
        "event_id",
        "task_path",
        "backend",
        "arguments",
        "value",
        "enqueued_at",
        "started_at",
        "finished_at",
        "worker_ids",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # written by the task's handler

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="attempts")
    def attempts(self, record: TaskResultRecord) -> int:
        return len(record.worker_ids)

    @admin.display(description="arguments")
    def arguments(self, record: TaskResultRecord) -> str:
        return _pretty({"args": record.args, "kwargs": record.kwargs})

    @admin.display(description="return value")
    def value(self, record: TaskResultRecord) -> str:
        return _pretty(record.return_value)
