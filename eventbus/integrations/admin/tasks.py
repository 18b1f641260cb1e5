"""Return values of Django tasks (``eventbus.integrations.tasks``). The task itself (its
state, errors and Retry) is its event, under Events with the same id."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.safestring import SafeString

from eventbus.integrations.admin import display
from eventbus.models import TaskResultRecord


@admin.register(TaskResultRecord)
class TaskResultAdmin(admin.ModelAdmin):
    list_display = ("event_id", "task_path", "finished", "attempts")
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

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, record: TaskResultRecord) -> str:
        return display.moment(record.finished_at)

    @admin.display(description="attempts")
    def attempts(self, record: TaskResultRecord) -> int:
        return len(record.worker_ids)

    @admin.display(description="arguments")
    def arguments(self, record: TaskResultRecord) -> SafeString:
        return display.pretty_json({"args": record.args, "kwargs": record.kwargs})

    @admin.display(description="return value")
    def value(self, record: TaskResultRecord) -> SafeString:
        return display.pretty_json(record.return_value)
