"""The event pages: a list that fits a screen, and a read-only page per event.

An event's page shows its state now (``running`` while a worker holds it, the next run
of a failed one), its times to the millisecond, each attempt with its traceback, the row
that made it, the events of its collection as a tree, and Retry and Discard buttons.
Events are written by triggers and by the engine, never by hand: nothing here saves or
deletes one.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from eventbus import conf
from eventbus.event import DEAD, DONE, FAILED, PENDING, RUNNABLE
from eventbus.integrations.admin import display, source
from eventbus.models import EventRecord
from eventbus.operating import maintenance, status
from eventbus.sql import ERROR_ENTRY_CHARS, Scope

TREE_LIMIT = 200  # events of a collection listed on an event's page
LIST_ERROR_CHARS = 100


def is_running(record: EventRecord) -> bool:
    """Held by a worker when the page was read (see `mark_running`)."""
    return bool(getattr(record, "running", False))


def mark_running(records: list[EventRecord], alias: str) -> None:
    """Note on each record whether a worker holds it now: one query for the lot."""
    held = status.claimed_ids((r.id for r in records if r.state in RUNNABLE), alias)
    for record in records:
        record.running = record.id in held  # type: ignore[attr-defined]


class EventChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        mark_running(list(self.result_list), self.model_admin.alias)


@admin.register(EventRecord)
class EventAdmin(admin.ModelAdmin):
    change_form_template = "admin/eventbus/eventrecord/change_form.html"
    change_list_template = "admin/eventbus/eventrecord/change_list.html"
    list_display = (
        "id",
        "channel_name",
        "short_key",
        "state_now",
        "attempts",
        "created",
        "finished",
        "worker",
        "error_summary",
    )
    list_display_links = ("id", "channel_name")
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
                    "source_row",
                    "key",
                    "state_detail",
                    "attempts",
                    "worker",
                )
            },
        ),
        (
            "Times",
            {
                "fields": (
                    "created_full",
                    "first_claimed",
                    "finished_full",
                    "next_run",
                    "claim_to_finish",
                )
            },
        ),
        ("Error", {"fields": ("current_error",)}),
        ("Attempts", {"fields": ("attempt_history",)}),
        ("Payload", {"fields": ("old_row", "new_row")}),
        ("Causation", {"fields": ("causation",)}),
    )
    readonly_fields = tuple(name for _, group in fieldsets for name in group["fields"])

    @property
    def alias(self) -> str:
        return conf.get().DATABASE_ALIAS

    # --- Read-only: the page is a view; Retry and Discard are the only changes ------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[EventRecord]:
        # The primary, whatever the project's routers say: a replica's copy lags, and a
        # claim (running) is only visible where it is held.
        return super().get_queryset(request).using(self.alias)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return EventChangeList

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # events are written by triggers, not by hand

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # no form to save: the page is a view (Retry and Discard aside)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # history is purged by age (DONE_RETENTION, `events purge`)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Retry and Discard: for users allowed to change events ("Can change event")."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> EventRecord | None:
        record = super().get_object(request, object_id, from_field)
        if record is not None:
            mark_running([record], self.alias)
            record.can_retry = record.state in maintenance.REQUEUABLE and not is_running(record)  # type: ignore[attr-defined]
            record.can_discard = record.state in RUNNABLE and not is_running(record)  # type: ignore[attr-defined]
        return record

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = {**(extra_context or {}), "can_operate": self.has_operate_permission(request)}
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view  # login, CSRF, never cached
        return [
            path(
                "<path:object_id>/retry/",
                wrap(require_POST(self.retry_view)),
                name="{}_{}_retry".format(*info),
            ),
            path(
                "<path:object_id>/discard/",
                wrap(require_POST(self.discard_view)),
                name="{}_{}_discard".format(*info),
            ),
            *super().get_urls(),
        ]

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        record = self._operated(request, object_id)
        done = maintenance.requeue(
            Scope(states=maintenance.REQUEUABLE, ids=(record.pk,)), self.alias
        )
        if done:
            self.message_user(
                request, f"Event {record.pk} re-queued: pending, due now.", messages.SUCCESS
            )
        else:
            self.message_user(
                request,
                f"Event {record.pk} was not re-queued: a worker is handling it, or it is no "
                "longer failed or dead.",
                messages.WARNING,
            )
        return self._back(record)

    def discard_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        record = self._operated(request, object_id)
        if maintenance.discard([record.pk], self._discard_reason(request), self.alias):
            self.message_user(
                request, f"Event {record.pk} discarded: dead, kept.", messages.SUCCESS
            )
        else:
            self.message_user(
                request,
                f"Event {record.pk} was not discarded: it is {record.state}, or a worker "
                "is handling it right now.",
                messages.WARNING,
            )
        return self._back(record)

    def _operated(self, request: HttpRequest, object_id: str) -> EventRecord:
        if not self.has_operate_permission(request):
            raise PermissionDenied
        record = self.get_queryset(request).filter(pk=unquote(object_id)).first()
        if record is None:
            raise Http404(f"no event {object_id}")
        return record

    def _back(self, record: EventRecord) -> HttpResponseRedirect:
        info = self.opts.app_label, self.opts.model_name
        return HttpResponseRedirect(
            reverse(
                "admin:{}_{}_change".format(*info),
                args=[quote(record.pk)],
                current_app=self.admin_site.name,
            )
        )

    @staticmethod
    def _discard_reason(request: HttpRequest) -> str:
        return f"Discarded in the admin by {request.user}"

    # --- The list -----------------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[EventRecord], search_term: str
    ) -> tuple[QuerySet[EventRecord], bool]:
        term = search_term.strip()
        if term.isdigit():
            return queryset.filter(id=int(term)) | queryset.filter(key=term), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="channel", ordering="channel")
    def channel_name(self, record: EventRecord) -> SafeString:
        return display.breakable(record.channel)

    @admin.display(description="key", ordering="key")
    def short_key(self, record: EventRecord) -> str:
        key = record.key or ""
        return key if len(key) <= 24 else format_html('<span title="{}">{}…</span>', key, key[:23])

    @admin.display(description="state", ordering="state")
    def state_now(self, record: EventRecord) -> str:
        return status.RUNNING if is_running(record) else record.state

    @admin.display(description="created", ordering="created_at")
    def created(self, record: EventRecord) -> str:
        return display.moment_short(record.created_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, record: EventRecord) -> str:
        return display.moment_short(record.finished_at)

    @admin.display(description="last error")
    def error_summary(self, record: EventRecord) -> str:
        """Only a failed or dead event has a current error; a done or re-queued one's
        last error is history, on its page."""
        if record.state not in (FAILED, DEAD) or is_running(record):
            return ""
        return display.first_line(record.last_error, LIST_ERROR_CHARS)

    @admin.action(
        description="Retry: re-queue the selected failed or dead events",
        permissions=("operate",),
    )
    def retry_events(self, request: HttpRequest, queryset: QuerySet[EventRecord]) -> None:
        ids = tuple(queryset.values_list("id", flat=True))
        done = maintenance.requeue(Scope(states=maintenance.REQUEUABLE, ids=ids), self.alias)
        self.message_user(
            request,
            f"Re-queued {len(done)} event(s); the others were not failed or dead."
            if len(done) < len(ids)
            else f"Re-queued {len(done)} event(s).",
            messages.SUCCESS,
        )

    @admin.action(
        description="Discard: stop retrying the selected pending or failed events",
        permissions=("operate",),
    )
    def discard_events(self, request: HttpRequest, queryset: QuerySet[EventRecord]) -> None:
        ids = list(queryset.values_list("id", flat=True))
        done = maintenance.discard(ids, self._discard_reason(request), self.alias)
        self.message_user(request, f"Discarded {len(done)} event(s).", messages.SUCCESS)

    # --- The page -----------------------------------------------------------------------

    @admin.display(description="source row")
    def source_row(self, record: EventRecord) -> str:
        found = source.find(record, self.admin_site)
        if found.model is None or found.pk is None:
            return record.table_name or display.EMPTY
        name = f"{found.model._meta.verbose_name} {found.pk}"
        if found.url:
            return format_html('<a href="{}">{}</a> (table {})', found.url, name, found.table)
        if found.exists is False:
            return f"{name} (table {found.table}): no longer exists"
        return f"{name} (table {found.table}; not in the admin)"

    @admin.display(description="state")
    def state_detail(self, record: EventRecord) -> str:
        if is_running(record):
            return f"running: a worker holds it now (attempt {record.attempts + 1})"
        if record.state == FAILED:
            return f"failed: runs again {self.next_run(record)}"
        if record.state == PENDING and record.run_after > timezone.now():
            return f"pending: due {self.next_run(record)}"
        return record.state

    @admin.display(description="created")
    def created_full(self, record: EventRecord) -> str:
        return display.moment(record.created_at, zone=True)

    @admin.display(description="finished")
    def finished_full(self, record: EventRecord) -> str:
        return display.moment(record.finished_at, zone=True)

    @admin.display(description="first claimed")
    def first_claimed(self, record: EventRecord) -> str:
        return display.moment(record.first_claimed_at, zone=True)

    @admin.display(description="next run")
    def next_run(self, record: EventRecord) -> str:
        if record.state not in RUNNABLE or is_running(record):
            return display.EMPTY
        now = timezone.now()
        if record.run_after <= now:
            return "now (due)"
        when = display.moment(record.run_after, zone=True)
        return f"{when} ({display.relative(record.run_after, now)})"

    @admin.display(description="first claim to finish")
    def claim_to_finish(self, record: EventRecord) -> str:
        if record.first_claimed_at is None or record.finished_at is None:
            return display.EMPTY
        span = (record.finished_at - record.first_claimed_at).total_seconds()
        return f"{display.seconds(span)} (every attempt, and the waits between them)"

    @admin.display(description="current error")
    def current_error(self, record: EventRecord) -> str:
        if record.state in (FAILED, DEAD) and not is_running(record):
            return display.pre(record.last_error or "(no text)")
        now = status.RUNNING if is_running(record) else record.state
        if record.errors or record.last_error:
            return f"None: the event is {now}. Earlier attempts' errors are under Attempts."
        return "None."

    @admin.display(description="attempts")
    def attempt_history(self, record: EventRecord) -> SafeString | str:
        """One row per attempt, oldest first; each error folds open to its traceback (the
        last one open)."""
        entries = [e for e in record.errors or [] if isinstance(e, dict)]
        rows: list[tuple[Any, ...]] = []
        for number, entry in enumerate(entries, 1):
            rows.append(
                (
                    entry.get("attempt", "?"),
                    display.moment(display.parse_moment(entry.get("at"))),
                    _took(entry.get("seconds")),
                    entry.get("worker") or "(none: discarded)",
                    self._attempt_error(str(entry.get("error") or ""), number == len(entries)),
                )
            )
        if record.state == DONE:
            rows.append(
                (
                    record.attempts,
                    display.moment(record.finished_at),
                    _took(record.duration),
                    record.worker,
                    "succeeded",
                )
            )
        elif is_running(record):
            running = (record.attempts + 1, display.EMPTY, display.EMPTY, display.EMPTY)
            rows.append((*running, "running now"))
        if not rows:
            return "None yet."
        body = format_html_join(
            "",
            "<tr><td>{}</td><td class='eventbus-nowrap'>{}</td><td class='eventbus-nowrap'>{}"
            "</td><td>{}</td><td>{}</td></tr>",
            rows,
        )
        return format_html(
            '<table class="eventbus-attempts"><thead><tr><th>attempt</th><th>ended</th>'
            "<th>took</th><th>worker</th><th>outcome</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    @staticmethod
    def _attempt_error(error: str, last: bool) -> SafeString:
        summary, _, rest = error.partition("\n")
        if len(error) >= ERROR_ENTRY_CHARS:
            rest += "\n… (cut here: the last attempt's whole error is under Error)"
        return format_html(
            "<details{}><summary>{}</summary>{}</details>",
            " open" if last else "",
            summary or "(no text)",
            display.pre(rest.rstrip("\n")) if rest.strip() else "",
        )

    @admin.display(description="old row")
    def old_row(self, record: EventRecord) -> SafeString:
        return display.pretty_json(record.old)

    @admin.display(description="new row")
    def new_row(self, record: EventRecord) -> SafeString:
        return display.pretty_json(record.new)

    @admin.display(description="collection")
    def causation(self, record: EventRecord) -> SafeString | str:
        collection = record.correlation_id or record.id
        members = (
            EventRecord.objects.using(self.alias)
            .filter(Q(pk=collection) | Q(correlation_id=collection))
            .order_by("id")
        )
        found = list(members[: TREE_LIMIT + 1])
        if len(found) <= 1 and record.caused_by is None:
            return "None: nothing caused this event, and it caused nothing."
        shown = status.describe(found[:TREE_LIMIT], self.alias)
        ids = {event["id"] for event in shown}
        lines = [
            self._tree_line(event, depth, record.id, ids)
            for depth, event in status.tree_order(shown)
        ]
        more = ""
        if len(found) > TREE_LIMIT:
            rest = members.count() - TREE_LIMIT
            more = format_html(
                "<li>… and {} more (<code>./manage.py events tree {}</code> lists them all)</li>",
                rest,
                record.id,
            )
        return format_html(
            '<ul class="eventbus-tree">{}{}</ul>',
            format_html_join("", "{}", ((line,) for line in lines)),
            more,
        )

    def _tree_line(self, event: dict[str, Any], depth: int, current: int, ids: set[int]) -> str:
        info = self.opts.app_label, self.opts.model_name
        url = reverse(
            "admin:{}_{}_change".format(*info),
            args=[event["id"]],
            current_app=self.admin_site.name,
        )
        key = f" key={event['key']}" if event["key"] is not None else ""
        parent = event["caused_by"]
        orphan = (
            f" (caused by event {parent}, no longer in the table)"
            if (parent is not None and parent not in ids)
            else ""
        )
        text = f"{event['channel']}{key}: {event['state']}{orphan}"
        if event["id"] == current:
            return format_html(
                '<li style="margin-left: {}em"><strong>{} {} (this event)</strong></li>',
                depth * 1.5,
                event["id"],
                text,
            )
        return format_html(
            '<li style="margin-left: {}em"><a href="{}">{}</a> {}</li>',
            depth * 1.5,
            url,
            event["id"],
            text,
        )


def _took(seconds: Any) -> str:
    """An attempt's duration, or a dash for attempts recorded before durations were."""
    return display.seconds(float(seconds)) if isinstance(seconds, int | float) else display.EMPTY
