"""The workers page: each listener process by its heartbeat row, what it has handled, the
batch it holds now, and which have gone silent.

Nothing here is stored for the page. The handled count is read from the event table
(done events whose ``worker`` is this one or one of its handler slots, finished since it
started), so it leaves out events purged since (``DONE_RETENTION``). The current batch
is the worker's row in the crash ledger (``eventbus_inflight``), which every worker
writes before a batch's handlers run; that row outlives its batch until the next one, so
it counts as current only while a worker still holds its events.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import CharField, Count, F, Func, Q, QuerySet, Value
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from eventbus import conf
from eventbus.event import DONE
from eventbus.integrations.admin import display
from eventbus.models import EventRecord, InflightRecord, WorkerRecord
from eventbus.operating import status

# Workers heartbeat every HEALTH_INTERVAL, and the supervisor beats for one busy in a
# handler within its timeout. Three missed beats (30 s by default, as eventbus_health's
# --max-silence) mean the worker is hung, or died without removing its row.
SILENT_BEATS = 3


def silence_limit() -> float:
    return SILENT_BEATS * conf.get().HEALTH_INTERVAL


@dataclass(frozen=True)
class Batch:
    """A ledger row: the batch a worker (or one of its slots) claimed last."""

    slot: str
    size: int
    first_id: int | None
    last_id: int | None
    started_at: datetime
    held: bool  # a worker holds its events now: the batch is being handled


def annotate(workers: list[WorkerRecord], alias: str) -> None:
    """Set `handled` and `batches` on each worker: two queries for the lot, and one more
    to see which batches are still held."""
    if not workers:
        return
    base = Func(F("worker"), Value("#"), Value(1), function="split_part", output_field=CharField())
    since = functools.reduce(
        operator.or_, (Q(base=w.name, finished_at__gte=w.started_at) for w in workers)
    )
    handled = dict(
        EventRecord.objects.using(alias)
        .annotate(base=base)
        .filter(since, state=DONE)
        .values_list("base")
        .annotate(n=Count("id"))
        .values_list("base", "n")
    )
    names = [w.name for w in workers]
    theirs = functools.reduce(
        operator.or_, (Q(worker=n) | Q(worker__startswith=f"{n}#") for n in names)
    )
    rows = list(InflightRecord.objects.using(alias).filter(theirs).order_by("started_at"))
    held = status.claimed_ids((r.first_ids[0] for r in rows if r.first_ids), alias)
    for worker in workers:
        worker.handled = handled.get(worker.name, 0)  # type: ignore[attr-defined]
        worker.batches = [  # type: ignore[attr-defined]
            Batch(
                slot=row.worker,
                size=sum(
                    last - first + 1
                    for first, last in zip(row.first_ids, row.last_ids, strict=True)
                ),
                first_id=min(row.first_ids, default=None),
                last_id=max(row.last_ids, default=None),
                started_at=row.started_at,
                held=bool(row.first_ids) and row.first_ids[0] in held,
            )
            for row in rows
            if row.worker.split("#", 1)[0] == worker.name
        ]


class WorkerChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        annotate(list(self.result_list), self.model_admin.alias)


@admin.register(WorkerRecord)
class WorkerAdmin(admin.ModelAdmin):
    change_list_template = "admin/eventbus/workerrecord/change_list.html"
    change_form_template = "admin/eventbus/workerrecord/change_form.html"
    list_display = (
        "name",
        "host",
        "pid",
        "channel_list",
        "started",
        "seen",
        "handled_count",
        "current_batch",
    )
    ordering = ("host", "pid")
    fields = list_display
    readonly_fields = fields

    @property
    def alias(self) -> str:
        return conf.get().DATABASE_ALIAS

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkerRecord]:
        return super().get_queryset(request).using(self.alias)  # the primary, never a replica

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return WorkerChangeList

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> WorkerRecord | None:
        worker = super().get_object(request, object_id, from_field)
        if worker is not None:
            annotate([worker], self.alias)
        return worker

    # Heartbeat rows are the workers' own: they write them, and remove them on a clean stop.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="channels")
    def channel_list(self, worker: WorkerRecord) -> str:
        return ", ".join(c for c in worker.channels.split(",") if c) or "(none)"

    @admin.display(description="started", ordering="started_at")
    def started(self, worker: WorkerRecord) -> str:
        return display.moment(worker.started_at)

    @admin.display(description="last seen", ordering="last_seen")
    def seen(self, worker: WorkerRecord) -> str:
        silence = (timezone.now() - worker.last_seen).total_seconds()
        when = display.moment(worker.last_seen)
        if silence > silence_limit():
            return format_html(
                '{} <strong class="eventbus-silent" title="no heartbeat for over {} s: hung, '
                'or stopped without removing its row">silent for {}</strong>',
                when,
                f"{silence_limit():g}",
                display.seconds(silence),
            )
        return f"{when} ({display.seconds(max(silence, 0.0))} ago)"

    @admin.display(description="handled (done since start)")
    def handled_count(self, worker: WorkerRecord) -> int:
        return int(getattr(worker, "handled", 0))

    @admin.display(description="current batch")
    def current_batch(self, worker: WorkerRecord) -> str:
        batches: list[Batch] = getattr(worker, "batches", [])
        held = [b for b in batches if b.held]
        now = timezone.now()
        if held:
            return "; ".join(
                f"{b.size} event{'s' if b.size != 1 else ''} (ids {b.first_id}-{b.last_id}) "
                f"since {display.moment(b.started_at)} "
                f"({display.seconds((now - b.started_at).total_seconds())})"
                for b in held
            )
        if batches:
            last = batches[-1]
            return (
                f"none (the last: {last.size} event{'s' if last.size != 1 else ''}, "
                f"{display.moment(last.started_at)})"
            )
        return "none"
