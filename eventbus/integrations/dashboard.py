"""The dashboard in the Django admin: "Event bus → Dashboard", on any project's admin site.

One row per channel, or per subscription of a channel that has several: handled per
minute, backlog, the oldest due event's wait, failed and dead events, p50 and p95
handler time; Pause and Resume buttons; charts of the last hour and day. The page
reloads itself every ``REFRESH`` seconds (``?refresh=0`` stops it).

A reusable app cannot ask its host for a custom ``AdminSite``, so the page is the
changelist of a proxy model (``eventbus.models.Dashboard``) with its own URLs: the
admin index lists it, and its permissions are the model's. Viewing needs
``eventbus.view_dashboard``; pausing and resuming need ``eventbus.change_dashboard``
(superusers have both). The buttons POST, under the admin's CSRF protection.
"""

from __future__ import annotations

import math
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils.http import urlencode

from eventbus import conf
from eventbus.integrations import charts
from eventbus.models import Dashboard
from eventbus.operating import overview, pauses, rollup
from eventbus.operating.overview import QueueRow

REFRESH = 10  # seconds between the page's reloads
NOTHING = "\N{EM DASH}"  # a cell with nothing to show


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view  # staff only, CSRF-protected
        return [
            path("", view(self.changelist_view), name=f"{name}_changelist"),
            path("pause/", view(self.pause_view), name=f"{name}_pause"),
            path("resume/", view(self.resume_view), name=f"{name}_resume"),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        queue = request.GET.get("queue") or None
        found = overview.overview(queue, conf.get().DATABASE_ALIAS)
        hour, day = found.hour, found.day
        context = {
            **self.admin_site.each_context(request),
            "title": "Event bus dashboard",
            "opts": self.opts,
            "overview": found,
            "rows": [_cells(row) for row in found.rows],
            "queue": queue,
            "refresh": _refresh(request.GET.get("refresh")),
            "can_steer": self.has_change_permission(request),
            "events_url": self._events_url(),
            "charts": [
                charts.bars("Handled per minute, last hour", hour.handled, hour.start, hour.step),
                charts.line("Backlog, last hour", hour.backlog, hour.start, hour.step),
                charts.bars(
                    "Failed or dead attempts per minute, last hour",
                    hour.failures,
                    hour.start,
                    hour.step,
                    css="eb-bar eb-failure",
                ),
                charts.bars(
                    f"Handled per {day.step} minutes, last day", day.handled, day.start, day.step
                ),
                charts.line(
                    f"Backlog (highest per {day.step} minutes), last day",
                    day.backlog,
                    day.start,
                    day.step,
                ),
                charts.bars(
                    f"Failed or dead attempts per {day.step} minutes, last day",
                    day.failures,
                    day.start,
                    day.step,
                    css="eb-bar eb-failure",
                ),
            ],
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "eventbus/dashboard.html", context)

    def _events_url(self) -> str | None:
        """The event list, to link failed and dead counts to, if the site has one."""
        try:
            return reverse(f"{self.admin_site.name}:eventbus_eventrecord_changelist")
        except NoReverseMatch:
            return None

    def pause_view(self, request: HttpRequest) -> HttpResponse:
        return self._steer(request, pause=True)

    def resume_view(self, request: HttpRequest) -> HttpResponse:
        return self._steer(request, pause=False)

    def _steer(self, request: HttpRequest, pause: bool) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        alias = conf.get().DATABASE_ALIAS
        name = request.POST.get("name", "")
        by = f"{request.user.get_username()} (admin)"
        if pause:
            try:
                added = pauses.pause(name, by, alias)
            except ValueError as exc:
                messages.error(request, str(exc))
            else:
                text = "its events wait" if added else "it was paused already"
                messages.success(request, f"Paused {name}: {text}.")
        else:
            resumed = pauses.resume(name, by, alias)
            if resumed:
                messages.success(request, f"Resumed {', '.join(resumed)}.")
            else:
                messages.warning(request, f"{name} was not paused.")
        target = reverse(f"{self.admin_site.name}:eventbus_dashboard_changelist")
        queue = request.POST.get("queue")
        return HttpResponseRedirect(f"{target}?{urlencode({'queue': queue})}" if queue else target)


def _refresh(value: str | None) -> int:
    """Seconds between reloads: REFRESH, or ?refresh=N (0: never; at least 5)."""
    try:
        seconds = int(value) if value is not None else REFRESH
    except ValueError:
        return REFRESH
    return 0 if seconds <= 0 else max(5, min(seconds, 3600))


def _cells(row: QueueRow) -> dict[str, Any]:
    """A row's numbers as they are, and as the page prints them."""
    return {
        "row": row,
        "per_minute": f"{row.per_minute:,.1f}",
        "handled": f"{row.handled:,}",
        "backlog": f"{row.backlog:,}",
        "oldest_due": duration(row.oldest_due) if row.backlog else NOTHING,
        "failed": f"{row.failed:,}",
        "dead": f"{row.dead:,}",
        "p50": duration(row.p50),
        "p95": duration(row.p95),
    }


def duration(seconds: float | None) -> str:
    """0.42 ms, 12.3 ms, 4.1 s, 1.5 min, 3.5 h; a dash for nothing measured."""
    if seconds is None:
        return NOTHING
    if math.isinf(seconds):  # the histogram's open-ended top bucket
        return f"> {duration(rollup.BUCKET_BOUNDS[-1])}"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.2g} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 10 else f"{hours:,.0f} h"
